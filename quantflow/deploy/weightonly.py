"""The deployable form of a fixed-point weight-only checkpoint (`fixed-<b>`, b <= 8): a LiteRT
model whose kernels are stored as integer codes (int8; INT4 when every code fits in 4 bits)
with float compute (a DEQUANTIZE op before each kernel's op), whose outputs equal the
TensorFlow simulation (the checkpoint run by Keras) within float rounding.

A fixed-point kernel is m * 2^-f / 10^s per value (quantflow.quant.weightonly.fixed):
integer codes m at one step per tensor. The converter folds a BatchNormalization into the
kernel before it, multiplying output channel c by g_c = gamma / sqrt(var + eps) (moving
statistics are float), and a scalar MUL before it (the input's Rescaling) too, so the
folded kernel is still the codes times one factor per channel (its sign goes into the
codes): exactly a per-channel int8 (or INT4) quantization, found from the file's float
kernel itself. The fp32 conversion of the checkpoint is rewritten with ai-edge-quantizer's
own transformation (`insert_dequant`: the kernel quantized with the given codes and
scales, a DEQUANTIZE op feeding its readers); each kernel is found in the file by its
values.

    kernels = weight_only_kernels(model, formats)   # from the checkpoint and errors.json
    flatbuffer = store_weight_only(fp32_flatbuffer, kernels)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantflow.errors import QuantflowError
from quantflow.quant.lowering import INT4_OPS


@dataclass
class WeightOnlyKernel:
    """A fixed-point kernel of the checkpoint: its layer, its integer codes in TFLite's
    layout (output channels on `axis`) and its step."""

    layer: str
    codes: np.ndarray
    step: float
    axis: int


def _layout(kind: str, array: np.ndarray) -> tuple[np.ndarray, int]:
    if kind == "Conv2D":  # [kh, kw, in, out] -> [out, kh, kw, in]
        return array.transpose(3, 0, 1, 2), 0
    if kind == "DepthwiseConv2D":  # [kh, kw, in, mult] -> [1, kh, kw, in * mult]
        return array.reshape(1, array.shape[0], array.shape[1], -1), 3
    return array.T, 0  # Dense: [in, out] -> [out, in]


def fixed_step(fmt: dict) -> float:
    """The step of a fixed-point format record (errors.json's fixed_point entry)."""
    return 2.0 ** -int(fmt["fractional_bits"]) / 10.0 ** int(fmt["decimal_shift"])


def weight_only_kernels(model, formats: dict) -> tuple[list[WeightOnlyKernel], list[str]]:
    """The kernels of the Keras `model` (a fixed-point checkpoint rebuilt) that the file
    can hold as codes: every Conv2D / DepthwiseConv2D / Dense kernel quantized with a
    format in `formats` ({"layer/kernel": fixed-point format}). Returns (kernels, reasons
    why the others stay float)."""
    from quantflow.quant.folding import float_kernel
    from quantflow.quant.graph import flatten_graph

    kernels, reasons = [], []
    for node in flatten_graph(model).nodes:
        kind = type(node.layer).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
            continue
        fmt = formats.get(f"{node.path}/kernel") or formats.get(f"{node.layer.name}/kernel")
        if fmt is None:
            reasons.append(f"{node.path}: its kernel is not fixed-point quantized")
            continue
        kernel, _ = float_kernel(node.layer, node)
        step = fixed_step(fmt)
        codes = np.rint(kernel.astype(np.float64) / step)
        if not np.allclose(codes * step, kernel, rtol=1e-6, atol=0):
            raise QuantflowError(
                f"{node.path}: its kernel is not on the grid of its fixed-point format {fmt}"
            )
        codes, axis = _layout(kind, codes)
        kernels.append(WeightOnlyKernel(node.path, codes, step, axis))
    return kernels, reasons


def _channel_scales(kernel: WeightOnlyKernel, values: np.ndarray) -> np.ndarray | None:
    """The per-channel scale that turns `kernel`'s codes into `values` (the file's float
    kernel: the converter may have folded a BatchNormalization after it or a scalar MUL
    before it, both per output channel), signed; None when `values` is not codes times one
    factor per channel (within float rounding): another tensor, or a fold that mixes
    channels."""
    if tuple(values.shape) != tuple(kernel.codes.shape):
        return None
    codes = np.moveaxis(kernel.codes, kernel.axis, 0).reshape(kernel.codes.shape[kernel.axis], -1)
    vals = np.moveaxis(values.astype(np.float64), kernel.axis, 0).reshape(codes.shape)
    scales = np.empty(len(codes))
    for c, (k, v) in enumerate(zip(codes, vals)):
        nonzero = k != 0
        if not nonzero.any():
            if np.any(v != 0):
                return None
            scales[c] = kernel.step
            continue
        ratio = v[nonzero] / k[nonzero]
        middle = float(np.median(ratio))
        if middle == 0 or np.any(v[~nonzero] != 0):
            return None
        if np.abs(ratio - middle).max() > 1e-5 * abs(middle):
            return None
        scales[c] = middle
    return scales


def store_weight_only(flatbuffer: bytes, kernels: list[WeightOnlyKernel]) -> bytes:
    """The fp32 TFLite model `flatbuffer` with every kernel of `kernels` stored as its
    codes (INT4 when they fit [-7, 7], else int8; per-channel scales, zero point 0)
    behind a DEQUANTIZE op (ai-edge-quantizer's `insert_dequant`). Each kernel is found by
    its values: the file's float kernel of its shape that is its codes times one factor
    per output channel (`_channel_scales`); one missing from the file raises. A kernel
    whose codes exceed int8 (an unsigned 8-bit tensor, codes up to 255) raises too."""
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.transformations import dequant_insert, transformation_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    subgraph = model.subgraphs[0]
    wanted = list(kernels)
    done = set()
    while True:
        found = None
        for index, op in enumerate(subgraph.operators):
            name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
            if name not in INT4_OPS or len(op.inputs) < 2 or op.inputs[1] in done:
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            data = model.buffers[tensor.buffer].data
            if tensor.type != qtyping.TensorType.FLOAT32 or data is None or len(data) == 0:
                continue
            values = np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float32)
            values = values.reshape(tuple(tensor.shape))
            for k in wanted:
                scales = _channel_scales(k, values)
                if scales is not None:
                    found = (op.inputs[1], k, scales)
                    break
            if found is not None:
                break
        if found is None:
            break
        tensor_id, kernel, scales = found
        wanted.remove(kernel)
        shape = [-1 if i == kernel.axis else 1 for i in range(kernel.codes.ndim)]
        codes = kernel.codes * np.sign(scales).reshape(shape)  # scales are positive
        if np.abs(codes).max() > 127:
            raise QuantflowError(
                f"{kernel.layer}: codes up to {int(np.abs(codes).max())} do not fit int8 "
                "(an unsigned 8-bit tensor): fixed-8 of this model has no int8 form"
            )
        bits = 4 if np.abs(codes).max() <= 7 else 8
        done.add(tensor_id)
        consumers = [i for i, op in enumerate(subgraph.operators) if tensor_id in list(op.inputs)]
        params = qtyping.UniformQuantParams(
            num_bits=bits,
            quantized_dimension=kernel.axis,
            scale=np.abs(scales).astype(np.float32),
            zero_point=np.zeros(scales.shape, np.int32),
            symmetric=True,
            quantized_data=codes.astype(np.int8),
        )
        dequant_insert.insert_dequant(
            transformation_utils.TransformationInput(
                tensor_id, model, subgraph, -1, consumers, params
            )
        )
        done.add(len(subgraph.tensors) - 1)  # the DEQUANTIZE output, a float input now
    if wanted:
        raise QuantflowError(
            "no float kernel in the converted model holds the fixed-point kernel(s) of "
            + ", ".join(k.layer for k in wanted)
        )
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def export_checked(model, formats: dict, path, images, batch_size: int = 250) -> dict:
    """Convert the fixed-point checkpoint `model` to fp32 TFLite, store its kernels as
    codes (`store_weight_only`), write the file at `path` and check it against `model`
    run by TensorFlow on `images`: the largest output difference (and the fp32 file's, for
    scale: both are float rounding), top-1 agreement, how the kernels are stored. Returns
    the check record."""
    from pathlib import Path
    from tempfile import TemporaryDirectory

    from quantflow.deploy.convert import convert, save
    from quantflow.deploy.int4 import weight_storage
    from quantflow.deploy.litert import TFLiteRunner
    from quantflow.quant.calibrate import image_batches

    kernels, reasons = weight_only_kernels(model, formats)
    fp32 = convert(model, "fp32")
    flatbuffer = store_weight_only(fp32, kernels)
    types = save(flatbuffer, path)

    def outputs(runner):
        return np.concatenate(
            [
                runner.scores(runner.run(runner.prepare(x)))
                for x in image_batches(images, batch_size)
            ]
        )

    simulation = np.concatenate(
        [np.asarray(model(x, training=False)) for x in image_batches(images, batch_size)]
    )
    exported = outputs(TFLiteRunner(path, 1))
    with TemporaryDirectory() as tmp:  # the plain fp32 conversion: float rounding's scale
        fp32_path = Path(tmp) / "fp32.tflite"
        fp32_path.write_bytes(fp32)
        reference = outputs(TFLiteRunner(fp32_path, 1))
    storage = weight_storage(flatbuffer)
    return {
        "size_bytes": len(flatbuffer),
        "fp32_size_bytes": len(fp32),
        **types,
        "images": int(len(images)),
        "max_abs_difference": float(np.abs(exported - simulation).max()),
        "fp32_max_abs_difference": float(np.abs(reference - simulation).max()),
        "max_abs_output": float(np.abs(simulation).max()),
        "top1_agreement": float(np.mean(exported.argmax(1) == simulation.argmax(1))),
        "weight_storage": storage,
        "kernels": (
            f"{storage['int4']} kernels as INT4, {storage['int8']} as int8 behind DEQUANTIZE"
        ),
        "float_kernels": reasons,
    }

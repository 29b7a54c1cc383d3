"""INT4 weights in a LiteRT file: the kernels a simulation quantized to at most 4 bits
(`quantflow.quant.lowering.INT4_BITS`) stored as TFLite INT4 tensors, two codes a byte, on
the trained grid (the scale is the simulation's b-bit step, nothing is recalibrated).

The converter already writes a CONV_2D or DEPTHWISE_CONV_2D kernel that went through a
b-bit fake-quant op as INT4. A FULLY_CONNECTED kernel cannot carry a per-channel fake-quant
op, so the converter quantizes its folded constant to int8 itself (scale max|w| / 127,
codes round(q * 127 / levels)); `store_int4` rewrites such a tensor with
`ai_edge_litert.tools.flatbuffer_utils` (the model as objects of the TFLite schema) and
ai-edge-quantizer's `pack_data`: the codes q = w / step, the scale step, and the int32 bias
moved to the grid TFLite requires (input scale x filter scale): round(b * s8 / step), which
recovers the simulation's own bias integers exactly (the simulation rounds its bias on that
grid: `QuantizedOp`, `FatWeightQuantizer.scale`).

    kernels = int4_kernels(qmodel)                    # from the simulation
    flatbuffer = store_int4(flatbuffer, kernels)      # after conversion
    weight_storage(flatbuffer)                        # {"int4": n, "int8": m, ...}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantflow.errors import QuantflowError
from quantflow.quant.lowering import INT4_BITS, INT4_OPS


@dataclass
class Int4Kernel:
    """One kernel the simulation holds at <= 4 bits: its layer, its quantized values in
    TFLite's layout (output channels on `axis`) and the step per output channel."""

    layer: str
    values: np.ndarray
    step: np.ndarray
    bits: int
    axis: int


def _tflite_layout(layer, kernel: np.ndarray) -> tuple[np.ndarray, int]:
    """A Keras kernel in TFLite's layout, and the axis of its output channels there."""
    kind = type(layer).__name__
    if kind == "QConv2D":  # [kh, kw, in, out] -> [out, kh, kw, in]
        return kernel.transpose(3, 0, 1, 2), 0
    if kind == "QDepthwiseConv2D":  # [kh, kw, in, mult] -> [1, kh, kw, in * mult]
        return kernel.reshape(1, kernel.shape[0], kernel.shape[1], -1), 3
    if kind == "QDense":  # [in, out] -> [out, in]
        return kernel.T, 0
    raise QuantflowError(f"{layer.name}: no INT4 layout for a {kind}")


def int4_kernels(qmodel) -> list[Int4Kernel]:
    """Every weighted layer of the fake-quant model `qmodel` whose weights are at most
    INT4_BITS bits: what the deployable file is to hold as INT4."""
    from quantflow.quant.layers import QuantizedOp

    out = []
    for layer in qmodel.layers:
        if not isinstance(layer, QuantizedOp) or layer.quantizer.bits > INT4_BITS:
            continue
        values, axis = _tflite_layout(layer, np.asarray(layer.quantized_kernel(), np.float32))
        step = np.asarray(layer.weight_scale(), np.float32).reshape(-1)
        step = np.broadcast_to(step, (values.shape[axis],)).copy()
        out.append(Int4Kernel(layer.name, values, step, int(layer.quantizer.bits), axis))
    return out


def _along(vector: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return np.asarray(vector).reshape(shape)


def _tensor_array(model, tensor) -> np.ndarray:
    from ai_edge_litert import schema_py_generated as schema

    dtype = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32}[tensor.type]
    data = np.asarray(model.buffers[tensor.buffer].data, np.uint8).tobytes()
    return np.frombuffer(data, dtype).reshape(tuple(tensor.shape))


def _own_buffer(model, tensor_index: int, subgraph) -> None:
    """Give a tensor a buffer of its own before its data is rewritten (a shared one would
    change another tensor too)."""
    from ai_edge_litert import schema_py_generated as schema

    tensor = subgraph.tensors[tensor_index]
    sharing = [t for t in subgraph.tensors if t.buffer == tensor.buffer]
    if len(sharing) > 1:
        model.buffers.append(schema.BufferT())
        tensor.buffer = len(model.buffers) - 1


def unpack_int4(model, tensor) -> np.ndarray:
    """The int8 codes of an INT4 tensor (two a byte, low nibble first), in its shape."""
    raw = np.asarray(model.buffers[tensor.buffer].data, np.uint8)
    size = int(np.prod(tensor.shape))
    nibbles = np.stack([raw & 0x0F, raw >> 4], axis=1).reshape(-1)[:size].astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles).reshape(tuple(tensor.shape))


def store_int4(flatbuffer: bytes, kernels: list[Int4Kernel]) -> bytes:
    """The TFLite model `flatbuffer` with every kernel in `kernels` stored as INT4: each is
    found by its values (the file's dequantized int8 kernel within half an int8 step of the
    simulation's, same shape); one the converter already stored as INT4 must hold the
    simulation's codes. Raises when a kernel is missing from the file or its codes do not
    fit in 4 bits."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer.transformations.transformation_utils import pack_data

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    wanted = list(kernels)
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
            if name not in INT4_OPS or len(op.inputs) < 2:
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            quant = tensor.quantization
            if quant is None or quant.scale is None:
                continue
            scale = np.asarray(quant.scale, np.float64)
            if tensor.type == schema.TensorType.INT4:
                codes = unpack_int4(model, tensor)
                values = codes * _along(scale, quant.quantizedDimension, codes.ndim)
            elif tensor.type == schema.TensorType.INT8:
                codes = _tensor_array(model, tensor)
                values = codes * _along(scale, quant.quantizedDimension, codes.ndim)
            else:
                continue
            match = next((k for k in wanted if _matches(k, values, scale)), None)
            if match is None:
                continue
            wanted.remove(match)
            if tensor.type == schema.TensorType.INT4:
                continue  # the converter stored it on the simulation's grid already
            _repack(model, subgraph, op, match, scale, pack_data)
    if wanted:
        raise QuantflowError(
            f"no INT8 or INT4 kernel in the converted model holds the {len(wanted)} <= "
            f"{INT4_BITS}-bit kernel(s) of {', '.join(k.layer for k in wanted)}"
        )
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _matches(kernel: Int4Kernel, values: np.ndarray, scale: np.ndarray) -> bool:
    if tuple(values.shape) != tuple(kernel.values.shape):
        return False
    tolerance = 0.5 * _along(scale, kernel.axis, values.ndim) * (1 + 1e-5) + 1e-12
    return bool(np.all(np.abs(values - kernel.values) <= tolerance))


def _repack(model, subgraph, op, kernel: Int4Kernel, scale8: np.ndarray, pack_data) -> None:
    """Rewrite an INT8 filter (and its int32 bias) as the INT4 codes of `kernel`."""
    from ai_edge_litert import schema_py_generated as schema

    step = _along(kernel.step, kernel.axis, kernel.values.ndim).astype(np.float64)
    codes = np.rint(kernel.values / step)
    limit = 2 ** (kernel.bits - 1) - 1
    if np.abs(codes).max() > limit or not np.allclose(codes * step, kernel.values, atol=1e-7):
        raise QuantflowError(
            f"{kernel.layer}: its kernel is not on its {kernel.bits}-bit grid (codes up to "
            f"{int(np.abs(codes).max())}, at most {limit} allowed)"
        )
    _own_buffer(model, op.inputs[1], subgraph)
    tensor = subgraph.tensors[op.inputs[1]]
    tensor.type = schema.TensorType.INT4
    model.buffers[tensor.buffer].data = pack_data(4, codes.astype(np.int8))
    tensor.quantization.scale = kernel.step.astype(np.float32).tolist()
    tensor.quantization.zeroPoint = [0] * len(kernel.step)
    tensor.quantization.quantizedDimension = kernel.axis
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        _own_buffer(model, op.inputs[2], subgraph)
        bias = subgraph.tensors[op.inputs[2]]
        ratio = np.broadcast_to(scale8, kernel.step.shape) / kernel.step.astype(np.float64)
        integers = np.rint(_tensor_array(model, bias).astype(np.float64) * ratio)
        model.buffers[bias.buffer].data = integers.astype(np.int32).view(np.uint8)
        input_scale = np.asarray(bias.quantization.scale, np.float64) / np.broadcast_to(
            scale8, kernel.step.shape
        )
        bias.quantization.scale = (input_scale * kernel.step).astype(np.float32).tolist()


def weight_storage(flatbuffer) -> dict:
    """How a TFLite model (path or bytes) stores the kernels of its CONV_2D,
    DEPTHWISE_CONV_2D and FULLY_CONNECTED ops (a kernel behind a DEQUANTIZE op: the
    DEQUANTIZE's input): counts of INT4, INT8 and other kernels, the bytes of INT4 and
    INT8 kernel data, and the most distinct codes in one kernel."""
    from pathlib import Path

    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    if isinstance(flatbuffer, (str, Path)):
        flatbuffer = Path(flatbuffer).read_bytes()
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    out = {"int4": 0, "int8": 0, "other": 0, "int4_bytes": 0, "int8_bytes": 0, "max_levels": 0}
    for subgraph in model.subgraphs:
        dequantized = {  # a weight-only model's kernel: the output of a DEQUANTIZE op
            op.outputs[0]: op.inputs[0]
            for op in subgraph.operators
            if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "DEQUANTIZE"
        }
        for op in subgraph.operators:
            if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) not in INT4_OPS:
                continue
            tensor = subgraph.tensors[dequantized.get(op.inputs[1], op.inputs[1])]
            data = model.buffers[tensor.buffer].data
            if tensor.type == schema.TensorType.INT4:
                codes = unpack_int4(model, tensor)
                kind = "int4"
            elif tensor.type == schema.TensorType.INT8 and data is not None:
                codes = _tensor_array(model, tensor)
                kind = "int8"
            else:
                out["other"] += 1
                continue
            out[kind] += 1
            out[f"{kind}_bytes"] += len(data)
            out["max_levels"] = max(out["max_levels"], int(np.unique(codes).size))
    return out

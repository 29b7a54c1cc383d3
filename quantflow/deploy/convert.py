"""Conversion of Keras models to TFLite flatbuffers (fp32, fp16, dynamic range, full-integer
int8 with int8 or uint8 I/O and its calibration studies, 16x8), calibration sets, and the
float fallback of chosen layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantflow.deploy.formats import FORMATS, IO_TYPES, parse_format
from quantflow.deploy.litert import interpreter
from quantflow.errors import QuantflowError


def calibration_indices(size: int, count: int, seed: int) -> np.ndarray:
    """A seeded sample of `count` of `size` training images (sorted) for calibration."""
    if count < 1:
        raise QuantflowError(f"tflite.calibration_images must be at least 1, got {count}")
    return np.sort(np.random.default_rng(seed).permutation(size)[: min(count, size)])


def select_calibration(labels, fmt: str, count: int, seed: int) -> np.ndarray:
    """The training images (indices, sorted) a format is calibrated on: `count`
    (tflite.calibration_images) seeded ones, N or P percent of them for int8-cal<N> /
    int8-cal<P>pct, or `count` seeded images of class k for int8-class<k>. A sweep's
    samples are nested: N images are the first N of one seeded permutation."""
    labels = np.asarray(labels)
    calibration = parse_format(fmt)["calibration"] or {}
    if "class" in calibration:
        k = calibration["class"]
        members = np.flatnonzero(labels == k)
        if members.size == 0:
            raise QuantflowError(
                f"TFLite format {fmt!r}: the training split has no image of class {k} "
                f"(classes 0..{int(labels.max())})"
            )
        return np.sort(members[calibration_indices(members.size, count, seed)])
    if "percent" in calibration:
        count = max(1, int(round(labels.size * calibration["percent"] / 100)))
    elif "count" in calibration:
        count = calibration["count"]
    return calibration_indices(labels.size, count, seed)


def convert(
    model,
    fmt: str,
    calibration: np.ndarray | None = None,
    io: str = "int8",
    float_islands: list[str] | None = None,
) -> bytes:
    """Convert a Keras model to TFLite with the TFLite converter (`parse_format`).

    fp32: a plain float model. fp16: float16 weights (dequantized at load), float
    compute. dynamic: int8 weights, float activations quantized on the fly (dynamic
    range). int8: full-integer post-training quantization, `io` ("int8" or "uint8") input
    and output, activation ranges from `calibration` (preprocessed float images, fed one
    at a time), weights per channel as the converter does by default. int16x8: 16-bit
    activations, 8-bit weights, calibrated likewise, float input and output.
    """
    import tensorflow as tf

    from quantflow.quant.ops import export_mode

    if io not in IO_TYPES:
        raise QuantflowError(f"tflite.io must be one of {', '.join(IO_TYPES)}, got {io!r}")
    base = parse_format(fmt)["base"]
    with export_mode():  # a fake-quant model traces as the converter expects it
        if float_islands and base == "int8":
            return _convert_with_islands(tf, model, calibration, io, float_islands)
        return _convert(tf, model, base, calibration, io)


def _representative(calibration):
    if calibration is None or len(calibration) == 0:
        raise QuantflowError("full-integer conversion needs calibration images")
    samples = np.asarray(calibration, dtype=np.float32)

    def representative_dataset():
        for i in range(len(samples)):
            yield [samples[i : i + 1]]

    return representative_dataset


def _convert_with_islands(tf, model, calibration, io: str, islands: list[str]) -> bytes:
    """Full-integer conversion that leaves the ops of the float-island layers float: the
    converter calibrates, then TFLite's selective quantizer (what its QuantizationDebugger
    runs) quantizes every op but those, with QUANTIZE / DEQUANTIZE around them."""
    from tensorflow.lite.python import convert as tflite_convert

    from quantflow.quant.lowering import island_scope

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(calibration)
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    names = [d["name"] for d in interpreter(calibrated).get_tensor_details()]
    denied = []
    for layer in islands:
        found = [n for n in names if island_scope(layer).search(n)]
        if not found:
            raise QuantflowError(
                f"float island {layer!r}: no op of it found in the converted model"
            )
        denied += found
    dtype = tf.uint8 if io == "uint8" else tf.int8
    return tflite_convert.mlir_quantize(
        calibrated,
        fully_quantize=True,
        input_data_type=dtype,
        output_data_type=dtype,
        denylisted_nodes=denied,
    )


def _convert(tf, model, base: str, calibration: np.ndarray | None, io: str) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if base in ("int8", "int16x8"):
        converter.representative_dataset = _representative(calibration)
    if base == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif base == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif base == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8 if io == "uint8" else tf.int8
        converter.inference_output_type = tf.uint8 if io == "uint8" else tf.int8
    elif base == "int16x8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    elif base != "fp32":
        raise QuantflowError(f"unknown TFLite format {base!r}; choose one of {', '.join(FORMATS)}")
    return converter.convert()


def convert_with_float_layers(model, calibration: np.ndarray, float_tensors: list[str]) -> bytes:
    """Full-integer post-training quantization of `model` as `convert(..., "int8")` does
    it, but the ops whose output tensors are named in `float_tensors` (names of the int8
    model's tensors, e.g. a diagnosis' worst layers) stay in float, with QUANTIZE /
    DEQUANTIZE around them: TFLite's QuantizationDebugger (selective quantization by
    denylisted nodes). Its input and output are float32."""
    import tensorflow as tf

    representative_dataset = _representative(calibration)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(float_tensors))
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative_dataset, debug_options=options
    )
    return debugger.get_nondebug_quantized_model()


def float_ops(tflite_model: bytes | str) -> list[str]:
    """The ops of a TFLite model that compute in float (not the I/O conversions)."""
    return [op for op, _ in float_op_outputs(tflite_model)]


def float_op_outputs(tflite_model: bytes | str) -> list[tuple[str, str]]:
    """(op name, output tensor name) of the ops of a TFLite model that compute in float,
    the I/O conversions (QUANTIZE, DEQUANTIZE) left out."""
    interp = interpreter(tflite_model)
    details = {d["index"]: d for d in interp.get_tensor_details()}
    return [
        (op["op_name"], details[op["outputs"][0]]["name"])
        for op in interp._get_ops_details()
        if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE", "DELEGATE")
        and np.dtype(details[op["outputs"][0]]["dtype"]).kind == "f"
    ]


def save(flatbuffer: bytes, path: str | Path) -> dict:
    """Write a TFLite flatbuffer atomically (quantflow.formats.atomic.write_atomic: a uniquely
    named temporary file, fsynced, renamed over `path`), log its size, input/output types
    and ops, and return `tensor_types` of it."""
    from quantflow.formats.atomic import write_atomic

    path = Path(path)
    write_atomic(path, flatbuffer)
    types = tensor_types(str(path))
    print(
        f"{path}: {len(flatbuffer)} bytes, input {types['input']}, output "
        f"{types['output']}, ops {', '.join(types['ops'])}"
    )
    return types


def tensor_types(tflite_model: bytes | str) -> dict:
    """Input/output dtypes and the op names of a TFLite model (for logs and tests)."""
    interp = interpreter(tflite_model)
    ops = sorted({op["op_name"] for op in interp._get_ops_details()})
    return {
        "input": np.dtype(interp.get_input_details()[0]["dtype"]).name,
        "output": np.dtype(interp.get_output_details()[0]["dtype"]).name,
        "ops": ops,
    }

"""Conversion of Keras models to TFLite flatbuffers (fp32 and post-training int8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantflow.errors import QuantflowError

FORMATS = ("fp32", "int8")


def calibration_indices(size: int, count: int, seed: int) -> np.ndarray:
    """A seeded sample of `count` of `size` training images (sorted) for calibration."""
    if count < 1:
        raise QuantflowError(f"tflite.calibration_images must be at least 1, got {count}")
    return np.sort(np.random.default_rng(seed).permutation(size)[: min(count, size)])


def convert(model, fmt: str, calibration: np.ndarray | None = None) -> bytes:
    """Convert a float Keras model to TFLite.

    fp32: a plain float model. int8: full-integer post-training quantization with int8
    input and output; activation ranges from `calibration` (preprocessed float images,
    fed one at a time), weights per-channel symmetric as the converter does by default.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if fmt == "fp32":
        pass
    elif fmt == "int8":
        if calibration is None or len(calibration) == 0:
            raise QuantflowError("int8 conversion needs calibration images")
        samples = calibration.astype(np.float32)

        def representative_dataset():
            for i in range(len(samples)):
                yield [samples[i : i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    else:
        raise QuantflowError(f"unknown TFLite format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return converter.convert()


def save(flatbuffer: bytes, path: str | Path) -> dict:
    """Write a TFLite flatbuffer atomically (a temporary file renamed over `path`), log its
    size, input/output types and ops, and return `tensor_types` of it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(flatbuffer)
    tmp.replace(path)
    types = tensor_types(str(path))
    print(f"{path}: {len(flatbuffer)} bytes, input {types['input']}, output "
          f"{types['output']}, ops {', '.join(types['ops'])}")
    return types


def tensor_types(tflite_model: bytes | str) -> dict:
    """Input/output dtypes and the op names of a TFLite model (for logs and tests)."""
    from ai_edge_litert.interpreter import Interpreter

    kwargs = {"model_path": tflite_model} if isinstance(tflite_model, str) else {"model_content": tflite_model}
    interp = Interpreter(**kwargs)
    ops = sorted({op["op_name"] for op in interp._get_ops_details()})
    return {
        "input": np.dtype(interp.get_input_details()[0]["dtype"]).name,
        "output": np.dtype(interp.get_output_details()[0]["dtype"]).name,
        "ops": ops,
    }


def activation_ranges(tflite_path: str) -> list[dict]:
    """The quantization chosen for each non-constant int8 tensor of a TFLite model: name,
    scale, zero point and the real range [min, max] it covers."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite_path))
    constants = set()
    for op in interp._get_ops_details():
        constants.update(i for i in op["inputs"] if i >= 0 and _is_constant(interp, i))
    rows = []
    for t in interp.get_tensor_details():
        q = t["quantization_parameters"]
        if t["index"] in constants or len(q["scales"]) != 1 or np.dtype(t["dtype"]) != np.int8:
            continue
        scale, zero = float(q["scales"][0]), int(q["zero_points"][0])
        name = t["name"].split(";")[0]  # fused ops list every source op; the first names it
        rows.append({"tensor": name, "scale": scale, "zero_point": zero,
                     "min": (-128 - zero) * scale, "max": (127 - zero) * scale})
    return rows


def _is_constant(interp, index: int) -> bool:
    try:
        interp.get_tensor(index)  # constants (weights, biases) hold data before allocation
        return True
    except ValueError:
        return False

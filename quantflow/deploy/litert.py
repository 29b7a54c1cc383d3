"""LiteRT: the one place a TFLite model is loaded into an interpreter, and a runner that
feeds it float images (quantized with the model's own input parameters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantflow.errors import QuantflowError


def interpreter(model, *, threads: int | None = None, inspect: bool = False):
    """A LiteRT interpreter of `model` (a .tflite path, or flatbuffer bytes). `threads`: the
    kernels' threads (LiteRT's default when None). `inspect`: the built-in kernels without
    the XNNPACK delegate, every tensor kept readable after invoke (per-op diagnosis)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if isinstance(model, (str, Path)):
        kwargs, what = {"model_path": str(model)}, str(model)
    else:
        kwargs, what = {"model_content": model}, "TFLite flatbuffer"
    if threads is not None:
        kwargs["num_threads"] = int(threads)
    if inspect:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        kwargs["experimental_preserve_all_tensors"] = True
    try:
        return Interpreter(**kwargs)
    except (ValueError, RuntimeError) as e:
        raise QuantflowError(f"{what}: not a loadable TFLite model ({e})") from e


class TFLiteRunner:
    """A TFLite model in the LiteRT interpreter; quantizes inputs and dequantizes outputs
    with the model's own parameters when its input/output tensors are integer."""

    kind = "tflite"

    def __init__(self, path: str | Path, threads: int = 1):
        self.interp = interpreter(Path(path), threads=threads)
        self.input = self.interp.get_input_details()[0]
        self.output = self.interp.get_output_details()[0]
        self.batch = None

    def _resize(self, batch: int) -> None:
        if batch != self.batch:
            shape = [batch, *self.input["shape"][1:]]
            self.interp.resize_tensor_input(self.input["index"], shape)
            self.interp.allocate_tensors()
            self.batch = batch

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed float images in the model's input type: quantized with the
        input tensor's scale and zero point when that is an integer type."""
        dtype = np.dtype(self.input["dtype"])
        if dtype.kind == "f":
            return x.astype(dtype, copy=False)
        scale, zero = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw outputs for a batch already in the input type (what a device runs)."""
        self._resize(len(batch))
        self.interp.set_tensor(self.input["index"], batch)
        self.interp.invoke()
        return self.interp.get_tensor(self.output["index"])

    def scores(self, y: np.ndarray) -> np.ndarray:
        """Raw outputs as float scores (dequantized when the output is an integer type)."""
        if np.dtype(self.output["dtype"]).kind == "f":
            return y.astype(np.float32)
        scale, zero = self.output["quantization"]
        return (y.astype(np.float32) - zero) * scale

"""The user's own model file, in the form their tools wrote (`arch:` one of `MODEL_FILES`,
`path:` the file): a Keras `.keras` file, a Keras 2 `.h5` file, a float `.tflite` file
(rebuilt as a Keras functional model of standard layers: quantflow.models.tflite_import),
a SavedModel directory or a TF1 frozen graph `.pb` (both converted to a float TFLite model
by TensorFlow's converter, then rebuilt the same way). Loaded, its head replaced when the
dataset has another number of classes, its input fitted to the dataset's images."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from quantflow.errors import QuantflowError

# arch -> what `path` holds
MODEL_FILES = {
    "keras_file": "a .keras model file",
    "h5_file": "a Keras 2 .h5 model file",
    "tflite_file": "a float .tflite model file",
    "saved_model": "a SavedModel directory (saved_model.pb inside)",
    "frozen_graph": "a TF1 frozen graph .pb file",
}


def read_model_file(
    path, kind: str = "keras_file", inputs=None, outputs=None, model_name: str | None = None
):
    """The Keras model in the user's file `path` of `kind` (a MODEL_FILES key). A frozen
    graph's input and output tensors are found (placeholders; nodes nothing reads) unless
    `inputs` / `outputs` name them. Errors name the file and what to do."""
    import keras

    path = Path(path)
    if kind not in MODEL_FILES:
        raise QuantflowError(f"unknown model file kind {kind!r}; one of: {', '.join(MODEL_FILES)}")
    if kind == "saved_model":
        if not (path / "saved_model.pb").is_file():
            raise QuantflowError(
                f"{path}: not a SavedModel directory (no saved_model.pb in it); give the "
                "directory tf.saved_model.save or model.export wrote"
            )
    elif not path.is_file():
        raise QuantflowError(f"model file {path} not found; give the path of {MODEL_FILES[kind]}")
    if kind in ("keras_file", "h5_file"):
        from quantflow.models.custom import load_keras

        if kind == "h5_file":
            with _keras3_h5(path) as readable:
                model = load_keras(readable, model_name)
        else:
            model = load_keras(path, model_name)  # custom layers: quantflow.models.custom
        if not isinstance(model, keras.Model):
            raise QuantflowError(f"{path}: holds a {type(model).__name__}, not a Keras model")
        return model
    from quantflow.models.tflite_import import keras_from_tflite

    if kind == "tflite_file":
        return keras_from_tflite(path)
    flatbuffer = (
        _convert_saved_model(path)
        if kind == "saved_model"
        else _convert_frozen_graph(path, inputs, outputs)
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        converted = Path(tmp) / f"{path.stem or 'model'}.tflite"
        converted.write_bytes(flatbuffer)
        return keras_from_tflite(converted)


# Keras 2 (tf_keras) layer config keys Keras 3 does not take, with the value at which
# leaving them out changes nothing: (class, key) -> neutral value
KERAS2_NEUTRAL_KEYS = {("DepthwiseConv2D", "groups"): 1}


@contextmanager
def _keras3_h5(path: Path):
    """`path`, or a copy of it whose model config lacks the Keras 2 keys Keras 3 refuses
    (KERAS2_NEUTRAL_KEYS, at their neutral values only: tf_keras writes DepthwiseConv2D
    with groups 1, which Keras 3's loader rejects)."""
    import json
    import shutil
    import tempfile

    import h5py

    from quantflow.models.custom import layer_configs

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as e:
        raise QuantflowError(f"{path}: not an HDF5 file ({e})") from e
    if raw is None:
        raise QuantflowError(
            f"{path}: an HDF5 file without a model config (a weights-only file?); give a "
            "whole model saved with model.save('name.h5')"
        )
    config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    dropped = []
    for node in layer_configs(config):
        layer = node["config"]
        for (cls, key), neutral in KERAS2_NEUTRAL_KEYS.items():
            if node["class_name"] == cls and key in layer and layer[key] == neutral:
                dropped.append(f"{layer.get('name')}.{key}")
                del layer[key]
    if not dropped:
        yield path
        return
    print(f"{path}: Keras 2 config keys left out for Keras 3 (neutral values): {len(dropped)}")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as f:
            f.attrs["model_config"] = json.dumps(config)
        yield copy


def _convert_saved_model(path: Path) -> bytes:
    import tensorflow as tf

    try:
        return tf.lite.TFLiteConverter.from_saved_model(str(path)).convert()
    except Exception as e:
        raise QuantflowError(
            f"{path}: TensorFlow's converter could not read this SavedModel "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); export it "
            "with a serving signature that takes one image batch"
        ) from e


def frozen_graph_io(path: Path) -> tuple[list[str], list[str]]:
    """The input tensors (Placeholder nodes) and outputs (nodes no other node reads, not
    constants or no-ops) of a TF1 frozen GraphDef."""
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef()
    try:
        graph.ParseFromString(Path(path).read_bytes())
    except Exception as e:
        raise QuantflowError(f"{path}: not a frozen TensorFlow graph (GraphDef): {e}") from e
    read = {name.split(":")[0].lstrip("^") for node in graph.node for name in node.input}
    inputs = [n.name for n in graph.node if n.op == "Placeholder"]
    outputs = [
        n.name
        for n in graph.node
        if n.name not in read and n.op not in ("Const", "NoOp", "Placeholder", "Assert")
    ]
    return inputs, outputs


def _convert_frozen_graph(path: Path, inputs=None, outputs=None) -> bytes:
    import tensorflow as tf

    found_in, found_out = frozen_graph_io(path)
    inputs, outputs = list(inputs or found_in), list(outputs or found_out)
    if len(inputs) != 1 or len(outputs) != 1:
        raise QuantflowError(
            f"{path}: found inputs {inputs} and outputs {outputs}; one image input and one "
            "output are expected: name them with the model's inputs: [...] and outputs: "
            "[...] in config"
        )
    try:
        converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(str(path), inputs, outputs)
        return converter.convert()
    except Exception as e:
        raise QuantflowError(
            f"{path}: TensorFlow's converter could not convert this frozen graph from "
            f"{inputs} to {outputs} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from e


def load_user_model(
    path,
    num_classes: int | None = None,
    input_shape=None,
    kind="keras_file",
    model_name: str | None = None,
    **io,
):
    """A user's own model from `path` (`kind`: a MODEL_FILES key; `io`: a frozen graph's
    `inputs` / `outputs`). With `num_classes` different from its output size, the last
    Dense layer (and anything after it, e.g. a softmax) is replaced by a new
    Dense(num_classes) named "logits" on the same features. With the dataset's
    `input_shape` (H, W, C): a 3-channel model on a grayscale dataset gets the image tiled
    to 3 channels in front (Concatenate "gray_to_rgb", as the zoo models do); any other
    mismatch stops with the two shapes named."""
    path = Path(path)
    model = read_model_file(path, kind, model_name=model_name, **io)
    if num_classes is not None and model.output_shape[-1] != num_classes:
        model = replace_head(model, num_classes, source=str(path))
    if input_shape is not None:
        model = _fit_input(model, tuple(int(v) for v in input_shape), str(path))
    return model


def _fit_input(model, shape: tuple, source: str):
    """`model` for images of `shape` (H, W, C): as it is when its input takes them, wrapped
    behind a gray -> RGB tiling for a 3-channel model on 1-channel images."""
    import keras
    from keras import layers

    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        raise QuantflowError(
            f"{source}: the model takes {len(inputs)} inputs; one image is expected"
        )
    expected = tuple(inputs[0].shape[1:])
    fits = len(expected) == len(shape) and all(
        e is None or e == s for e, s in zip(expected[:-1], shape[:-1])
    )
    if fits and expected[-1] in (None, shape[-1]):
        return model
    if fits and expected[-1] == 3 and shape[-1] == 1:
        image = keras.Input(shape=shape, name="image")
        x = layers.Concatenate(axis=-1, name="gray_to_rgb")([image, image, image])
        return keras.Model(image, model(x), name=model.name)
    raise QuantflowError(
        f"{source}: the model takes images of shape {expected}, the dataset has {shape}; "
        "save the model for the dataset's image size and channels (a 3-channel model "
        "takes grayscale images: they are tiled to RGB)"
    )


def replace_head(model, num_classes: int, source: str | None = None):
    """`model` with its last Dense layer (and what follows it) replaced by a new
    Dense(num_classes) named "logits" (no activation) on the same input tensor."""
    import keras
    from keras import layers

    dense = next((l for l in reversed(model.layers) if isinstance(l, layers.Dense)), None)
    what = source or f"model {model.name!r}"
    if dense is None:
        raise QuantflowError(
            f"{what}: has no Dense layer to replace with a {num_classes}-class head; "
            "end the model with a Dense classifier or give the matching number of classes"
        )
    if len(dense._inbound_nodes) != 1:
        raise QuantflowError(
            f"{what}: its last Dense layer {dense.name!r} is used {len(dense._inbound_nodes)} "
            "times; cannot tell which use is the head"
        )
    outputs = layers.Dense(num_classes, name="logits")(dense.input)
    return keras.Model(model.inputs, outputs, name=model.name)

"""The user's own model file (`arch: keras_file`): loaded, its head replaced when the dataset has
another number of classes, its input fitted to the dataset's images."""

from __future__ import annotations

from pathlib import Path

from quantflow.errors import QuantflowError


def load_user_model(path, num_classes: int | None = None, input_shape=None):
    """A user's own Keras model from a .keras file. With `num_classes` different from its
    output size, the last Dense layer (and anything after it, e.g. a softmax) is replaced by
    a new Dense(num_classes) named "logits" on the same features. With the dataset's
    `input_shape` (H, W, C): a 3-channel model on a grayscale dataset gets the image tiled
    to 3 channels in front (Concatenate "gray_to_rgb", as the zoo models do); any other
    mismatch stops with the two shapes named."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise QuantflowError(f"model file {path} not found; give the path of a saved .keras model")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for files that are not its models
        raise QuantflowError(
            f"{path}: not a loadable Keras model ({type(e).__name__}: {e}); save it with "
            "model.save('name.keras') using standard Keras layers only"
        ) from e
    if not isinstance(model, keras.Model):
        raise QuantflowError(f"{path}: holds a {type(model).__name__}, not a Keras model")
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

"""The one table of architectures a config can name (`models: <name>: arch:`), and the model
a config entry describes: a built-in or zoo architecture, or the user's own file."""

from __future__ import annotations

import functools

from quantflow.errors import QuantflowError
from quantflow.models.keras_apps import IMAGENET_ARCHITECTURES, build_zoo_model
from quantflow.models.tiny_mobilenet import tiny_mobilenet

# arch -> builder(input_shape, num_classes, **options): the options are the config entry's
# other keys (tiny_mobilenet: width, dropout, head; the zoo: weights, alpha, dropout,
# depth_multiplier; see quantflow.models.keras_apps)
ARCHITECTURES = {
    "tiny_mobilenet": tiny_mobilenet,
    **{arch: functools.partial(build_zoo_model, arch) for arch in IMAGENET_ARCHITECTURES},
}
# arch: <kind>, path: the user's own model file (quantflow.models.user.MODEL_FILES)
USER_FILES = {
    "keras_file": "model.keras",
    "h5_file": "model.h5",
    "tflite_file": "model.tflite",
    "saved_model": "SavedModel directory",
    "frozen_graph": "frozen graph .pb",
}


def build_model(arch: str, input_shape, num_classes: int, **options):
    """A model of a registered architecture for `input_shape` (H, W, C) images and
    `num_classes` logits, built with the architecture's `options`."""
    try:
        builder = ARCHITECTURES[arch]
    except KeyError:
        raise QuantflowError(
            f"unknown model architecture {arch!r}; choose one of: "
            f"{', '.join(sorted([*ARCHITECTURES, *USER_FILES]))}"
        ) from None
    return builder(input_shape, num_classes, **options)


def model_from_spec(spec: dict, input_shape, num_classes: int, name: str | None = None):
    """The model a config entry describes: `arch` names a registered architecture (its
    other keys are the builder's options) or is a model file kind (`keras_file`,
    `h5_file`, `tflite_file`, `saved_model`, `frozen_graph`) with a `path` to the user's
    own model (quantflow.models.user; `name`: its config entry, for messages). Custom
    code (`custom_modules`, `unsafe_deserialization`) is quantflow.models.custom's."""
    from quantflow.models.custom import KEYS

    user_keys = ("arch", "path", "inputs", "outputs", *KEYS)
    options = {k: v for k, v in spec.items() if k not in user_keys}
    arch = spec["arch"]
    if arch in USER_FILES:
        from quantflow.models.user import load_user_model

        if not spec.get("path"):
            raise QuantflowError(f"a model with arch: {arch} needs path: <{USER_FILES[arch]}>")
        io = {k: spec[k] for k in ("inputs", "outputs") if spec.get(k)}
        return load_user_model(
            spec["path"], num_classes, input_shape=input_shape, kind=arch, model_name=name, **io
        )
    return build_model(arch, input_shape, num_classes, **options)

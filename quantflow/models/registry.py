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
USER_FILE = "keras_file"  # arch: keras_file, path: the user's own .keras model


def build_model(arch: str, input_shape, num_classes: int, **options):
    """A model of a registered architecture for `input_shape` (H, W, C) images and
    `num_classes` logits, built with the architecture's `options`."""
    try:
        builder = ARCHITECTURES[arch]
    except KeyError:
        raise QuantflowError(
            f"unknown model architecture {arch!r}; choose one of: "
            f"{', '.join(sorted([*ARCHITECTURES, USER_FILE]))}"
        ) from None
    return builder(input_shape, num_classes, **options)


def model_from_spec(spec: dict, input_shape, num_classes: int):
    """The model a config entry describes: `arch` names a registered architecture (its
    other keys are the builder's options) or is `keras_file` with a `path` to the user's
    own model (quantflow.models.user)."""
    options = {k: v for k, v in spec.items() if k not in ("arch", "path")}
    arch = spec["arch"]
    if arch == USER_FILE:
        from quantflow.models.user import load_user_model

        if not spec.get("path"):
            raise QuantflowError("a model with arch: keras_file needs path: <model.keras>")
        return load_user_model(spec["path"], num_classes, input_shape=input_shape)
    return build_model(arch, input_shape, num_classes, **options)

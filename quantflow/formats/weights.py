"""A model's weights as plain numpy arrays in a pickle, and a loader that cannot run code.

A weights file holds one dict::

    {"format": "quantflow-weights/1",
     "metadata": {"architecture": model.to_json(), "model_name": ..., "input_shape": [...],
                  "num_classes": ..., "versions": {...}, "layer_classes": {layer: class},
                  "trainable": {"layer/role": bool}},
     "layers": {layer_name: {role: np.ndarray}}}

Layers appear in model order, only those that own weights. A role is the Keras variable's
short name (``kernel``, ``bias``, ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``;
DepthwiseConv2D's kernel is ``kernel`` too). A layer whose variables share a short name
(MultiHeadAttention) uses the variable's path below the layer instead (``query/kernel``).

Nested models (a Model used as a layer) are flattened: their layers are named
``outer/inner`` and the rebuilt model (whose architecture nests them the same way) is
walked the same way, so weights find their place again.

On disk the dict is a pickle of plain Python values only (quantflow.formats.safepickle): each array
is a record ``{"__ndarray__": dtype name, "shape": [...], "data": bytes}``. Weights files
are read with :func:`load_weights`, never with plain ``pickle.load``: its unpickler
resolves no global at all, so a crafted file can name no code, and an array can be no
larger than the bytes the file holds for it. :func:`rebuild_model` builds the architecture
with deferred (unallocated) variables and checks every variable's shape against the stored
arrays before any variable gets memory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from quantflow.errors import QuantflowError
from quantflow.formats.safepickle import (
    PLAIN_DTYPES,
    is_plain_dtype,
    load_plain,
    rerun_advice,
    save_plain,
)

FORMAT = "quantflow-weights/1"
# Variables a rebuilt architecture may create beyond the stored weights (random seed
# states of Dropout and the like): at most this many values.
MAX_UNSTORED_VALUES = 1 << 16

# --------------------------------------------------------------------------- extraction


def _roles(layer) -> list[str]:
    """Role names of a layer's variables: short names, or paths below the layer when the
    short names collide (layers made of sublayers)."""
    variables = list(layer.weights)
    names = [v.name for v in variables]
    if len(set(names)) == len(names):
        return names
    roles = []
    for v in variables:
        parts = str(v.path).split("/")
        roles.append(
            "/".join(parts[parts.index(layer.name) + 1 :]) if layer.name in parts else str(v.path)
        )
    if len(set(roles)) != len(roles):
        raise QuantflowError(
            f"layer {layer.name!r} ({type(layer).__name__}) has variables whose names collide "
            f"({', '.join(map(str, (v.path for v in variables)))}); rename them to save weights"
        )
    return roles


def _weighted_layers(model, prefix: str = "") -> dict:
    """{flat layer name: layer} for every layer that owns weights, in model order, with
    nested models flattened to 'outer/inner' names."""
    import keras

    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.update(_weighted_layers(layer, f"{prefix}{layer.name}/"))
        elif layer.weights:
            found[f"{prefix}{layer.name}"] = layer
    return found


def _variables(model) -> dict:
    """{flat layer name: {role: keras variable}}; every model variable must be reached."""
    table = {
        name: dict(zip(_roles(layer), layer.weights))
        for name, layer in _weighted_layers(model).items()
    }
    reached = {id(v) for roles in table.values() for v in roles.values()}
    missed = [str(v.path) for v in model.weights if id(v) not in reached]
    if missed:
        raise QuantflowError(
            f"model {model.name!r} has variables outside its layers ({', '.join(missed)}); "
            "only models built from Keras layers (functional, Sequential, nested) are supported"
        )
    return table


def _versions() -> dict:
    import keras

    versions = {"keras": keras.__version__, "numpy": np.__version__}
    tf = sys.modules.get("tensorflow")
    if tf is None:
        try:
            import tensorflow as tf
        except ImportError:
            tf = None
    if tf is not None:
        versions["tensorflow"] = tf.__version__
    return versions


def _input_shape(model) -> list:
    shapes = model.input_shape
    if isinstance(shapes, list):  # several inputs
        return [list(s[1:]) for s in shapes]
    return list(shapes[1:])


def extract_weights(model) -> dict:
    """A Keras model's architecture and weights as a plain dict of numpy arrays (see the
    module docstring for the layout)."""
    try:
        architecture = model.to_json()
    except Exception as e:  # subclassed models have no config
        raise QuantflowError(
            f"model {model.name!r} cannot be described as JSON ({e}); use a functional or "
            "Sequential model"
        ) from None
    layers, classes, trainable = {}, {}, {}
    for name, variables in _variables(model).items():
        layers[name] = {role: np.array(v.numpy()) for role, v in variables.items()}
        for role, v in variables.items():
            trainable[f"{name}/{role}"] = bool(v.trainable)
    for name, layer in _weighted_layers(model).items():
        classes[name] = type(layer).__name__
    output_shape = model.output_shape
    metadata = {
        "architecture": architecture,
        "model_name": model.name,
        "input_shape": _input_shape(model),
        "num_classes": int(output_shape[-1]) if not isinstance(output_shape, list) else None,
        "versions": _versions(),
        "layer_classes": classes,
        "trainable": trainable,
    }
    return {"format": FORMAT, "metadata": metadata, "layers": layers}


# --------------------------------------------------------------------------- checking


def check_weights(data, source: str = "weights", fix: str | None = None) -> dict:
    """Raise QuantflowError unless `data` has the layout of :func:`extract_weights`:
    the format tag, a metadata dict, and a dict of layers, each a dict of numeric arrays
    (dtypes of quantflow.formats.safepickle.PLAIN_DTYPES). `fix` replaces the advice in messages
    (a file's says which rule to rerun)."""
    fix = fix or "re-create them with quantflow.formats.weights.extract_weights"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = (
            f"a dict with format {data.get('format')!r}"
            if isinstance(data, dict)
            else f"a {type(data).__name__}"
        )
        raise QuantflowError(
            f"{source}: not a quantflow weights file (expected a dict with format {FORMAT!r}, "
            f"found {found}); {fix}"
        )
    if not isinstance(data.get("metadata"), dict) or not isinstance(data.get("layers"), dict):
        raise QuantflowError(f"{source}: weights lack the 'metadata' or 'layers' dict; {fix}")
    for layer, roles in data["layers"].items():
        if not isinstance(roles, dict):
            raise QuantflowError(f"{source}: layer {layer!r} is not a dict of arrays; {fix}")
        for role, array in roles.items():
            if not isinstance(array, np.ndarray) or not is_plain_dtype(array.dtype):
                kind = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
                raise QuantflowError(
                    f"{source}: {layer}/{role} is not a numeric numpy array ({kind}; "
                    f"expected one of {', '.join(PLAIN_DTYPES)}); {fix}"
                )
    return data


# --------------------------------------------------------------------------- files


def save_weights(data: dict, path: str | Path) -> None:
    """Write `data` to `path` as a pickle of plain values (arrays as records, see
    quantflow.formats.safepickle), atomically: a uniquely named temporary file in the same
    directory, fsynced, then renamed over `path`."""
    check_weights(data)
    save_plain(data, path, what="weights")


def load_weights(path: str | Path) -> dict:
    """Read a weights file written by :func:`save_weights` with quantflow.formats.safepickle's
    plain loader: a pickle naming any global (code, or numpy objects as the old format
    pickled them) is refused without running anything, every array is checked against its
    dtype name and shape, and no array can hold more than the file."""
    # the float model's weights, or a weight-quantized checkpoint
    rule = "extract_weights" if Path(path).parent.name == "float" else "weightquant"
    fix = rerun_advice(rule)
    data = load_plain(path, what="weights file", rerun=rule)
    return check_weights(data, f"weights file {path}", fix)


def _match(table: dict, layers: dict) -> list:
    """(variable, array) pairs for a {layer: {role: variable}} table and a {layer: {role:
    array}} dict; every weighted layer and role must be there with the variable's shape,
    and nothing else. Reads only shapes, so it works on unallocated variables."""
    for name in layers:
        if name not in table:
            raise QuantflowError(
                f"weights for layer {name!r}, which the model does not have "
                f"(its weighted layers: {', '.join(table) or 'none'})"
            )
    updates = []
    for name, variables in table.items():
        if name not in layers:
            raise QuantflowError(
                f"no weights for layer {name!r} of the model; the weights "
                "come from a different model"
            )
        given = layers[name]
        for role in given:
            if role not in variables:
                raise QuantflowError(
                    f"weights for {name}/{role}, which the model does not "
                    f"have (roles of {name!r}: {', '.join(variables)})"
                )
        for role, variable in variables.items():
            if role not in given:
                raise QuantflowError(
                    f"no weights for {name}/{role} of the model; the weights "
                    "come from a different model"
                )
            array = np.asarray(given[role])
            expected = tuple(variable.shape)
            if array.shape != expected:
                raise QuantflowError(
                    f"{name}/{role}: shape {array.shape} in the weights but "
                    f"{expected} in the model"
                )
            updates.append((variable, array))
    return updates


def assign_weights(model, layers: dict) -> None:
    """Set `model`'s weights from a {layer: {role: array}} dict. Every weighted layer and
    role must be there with the model's shape, and nothing else; nothing is assigned when
    any check fails."""
    for variable, array in _match(_variables(model), layers):
        variable.assign(array)


def _pending_variables() -> list:
    """Keras' list of variables created in a stateless scope and not yet initialized."""
    from keras.src.backend.common import global_state

    return global_state.get_global_attribute("uninitialized_variables", [], set_to_default=True)


def rebuild_model(data: dict, custom_objects: dict | None = None):
    """A Keras model built from ``metadata["architecture"]`` with every weight assigned by
    layer name and role; not compiled (the stored compile settings are ignored).

    The architecture is built in a keras.StatelessScope, where variables get their shape
    but no memory; every weighted layer's variables must match the stored arrays in shape
    (and the architecture may create at most MAX_UNSTORED_VALUES values beyond them, e.g.
    seed states) before any variable is allocated. So a stored architecture that declares,
    say, a Dense of 10^9 units next to small arrays is refused without allocating it."""
    import keras

    check_weights(data)
    metadata = data["metadata"]
    name = metadata.get("model_name")
    architecture = metadata.get("architecture")
    if not isinstance(architecture, str):
        raise QuantflowError(
            f"cannot rebuild model {name!r}: its stored architecture is a "
            f"{type(architecture).__name__}, not JSON text; re-extract the weights"
        )
    pending = _pending_variables()
    before = {id(v) for v in pending}
    try:
        try:
            config = json.loads(architecture)
            if isinstance(config, dict):  # an optimizer would need allocated variables
                config.pop("compile_config", None)
            with keras.StatelessScope(initialize_variables=False):
                model = keras.models.model_from_json(
                    json.dumps(config), custom_objects=custom_objects
                )
        except Exception as e:
            raise QuantflowError(
                f"cannot rebuild model {name!r} from its stored architecture "
                f"({type(e).__name__}: {e}); pass custom_objects for custom layers"
            ) from None
        if not isinstance(model, keras.Model):
            raise QuantflowError(
                f"cannot rebuild model {name!r}: its stored architecture describes "
                f"a {type(model).__name__}, not a Keras model; re-extract the weights"
            )
        updates = _match(_variables(model), data["layers"])
        stored = {id(variable) for variable, _ in updates}
        extra = [v for v in _pending_variables() if id(v) not in before and id(v) not in stored]
        values = sum(int(np.prod(v.shape, dtype=object)) for v in extra)
        if values > MAX_UNSTORED_VALUES:
            raise QuantflowError(
                f"cannot rebuild model {name!r}: its stored architecture creates {values} "
                "values besides the stored weights "
                f"({', '.join(str(v.path) for v in extra[:5])}); re-extract the weights"
            )
    except BaseException:
        pending = _pending_variables()  # forget what was created: never allocate it
        pending[:] = [v for v in pending if id(v) in before]
        raise
    with keras.StatelessScope():  # on exit, Keras allocates the deferred variables
        pass
    for variable, array in updates:
        variable.assign(array)
    return model

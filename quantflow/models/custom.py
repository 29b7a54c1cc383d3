"""The user's own code that their model needs, and loading Keras model files with it.

A model entry in config may name:

* `custom_modules`: Python files to import before any job loads the model (where the
  user's layers are registered with `@keras.saving.register_keras_serializable()`);
* `unsafe_deserialization: true`: the opt-in for Lambda layers that hold Python code, which
  Keras refuses to load by default (loading such a file runs its code: only for files you
  trust). Off by default; a warning goes to the job's log when on.

Every job that loads a Keras model of that entry (the float model, its fake-quant and
adjustable models) calls `use_custom_code` first, then `load_keras`: a file that needs
either gets one line naming the layer, its class and the config key to set."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
import zipfile
from pathlib import Path

from quantflow.errors import QuantflowError

KEYS = ("custom_modules", "unsafe_deserialization")
_IMPORTED: dict[str, object] = {}  # resolved path -> module


def custom_code(spec: dict | None) -> dict:
    """The custom-code settings of a model entry (only KEYS, with their defaults)."""
    spec = spec or {}
    return {
        "custom_modules": [str(p) for p in spec.get("custom_modules") or []],
        "unsafe_deserialization": bool(spec.get("unsafe_deserialization", False)),
    }


def use_custom_code(spec: dict | None) -> list[str]:
    """Import the model entry's `custom_modules` (each once per process, as a module named
    after its file) and, with `unsafe_deserialization`, let Keras load Lambda layers'
    Python code, with a warning. Returns the module files imported."""
    settings = custom_code(spec)
    imported = []
    for name in settings["custom_modules"]:
        path = Path(name).resolve()
        if str(path) in _IMPORTED:
            continue
        if not path.is_file():
            raise QuantflowError(f"custom_modules: {name} not found; give the path of a .py file")
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]  # two files, one stem
        module_name = f"quantflow_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
        spec_ = importlib.util.spec_from_file_location(module_name, path)
        if spec_ is None or spec_.loader is None:
            raise QuantflowError(f"custom_modules: {name} is not an importable Python file")
        module = importlib.util.module_from_spec(spec_)
        sys.modules[module_name] = module
        try:
            spec_.loader.exec_module(module)
        except Exception as e:  # the user's code: whatever it raises, name the file
            del sys.modules[module_name]
            raise QuantflowError(
                f"custom_modules: importing {name} failed ({type(e).__name__}: {e})"
            ) from e
        _IMPORTED[str(path)] = module
        imported.append(name)
        print(f"imported the model's custom module {name}")
    if settings["unsafe_deserialization"]:
        import keras

        keras.config.enable_unsafe_deserialization()
        print(
            "WARNING: unsafe_deserialization is on for this model: Keras will run the Python "
            "code stored in its Lambda layers when loading it (only for files you trust)"
        )
    return imported


def load_keras(path, model_name: str | None = None):
    """The Keras model in the .keras / .h5 file `path` (compile=False), after
    `use_custom_code`. A Lambda with Python code without the opt-in, or a layer class that
    is not registered, stops with one line naming the layer and the config key of
    `model_name` (the config's model entry) to set."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises several types for the same causes
        raise QuantflowError(_load_error(Path(path), e, model_name)) from e


def _load_error(path: Path, error: Exception, model_name: str | None) -> str:
    text = str(error)
    entry = f"models: {model_name}: " if model_name else "the model's config entry: "
    if "safe_mode" in text and "Lambda" in text:
        names = _layers_of_class(path, "Lambda")
        return (
            f"{path}: {_named(names, 'Lambda')} holds Python code, which Keras loads only "
            f"when you opt in: set {entry}unsafe_deserialization: true (it runs that code: "
            "only for files you trust), or wrap a function registered with "
            f"@keras.saving.register_keras_serializable() in a file named in {entry}"
            "custom_modules"
        )
    if "Lambda" in text and (names := _layers_of_class(path, "Lambda")):
        return (
            f"{path}: {_named(names, 'Lambda')} could not be rebuilt from its stored Python "
            "code: Keras runs that code without the module it was written in, so names it "
            "uses there (keras, tf, np, ...) are undefined; define the function in a file, "
            "register it with @keras.saving.register_keras_serializable() and name the file "
            f"in {entry}custom_modules"
        )
    unknown = re.search(r"Could not locate class '([^']+)'", text) or re.search(
        r"Unknown layer: '([^']+)'", text
    )
    if unknown:
        cls = unknown.group(1).split(">")[-1]
        return (
            f"{path}: {_named(_layers_of_class(path, cls), cls)} is of a class Keras does not "
            f"know: name the Python file that defines and registers it "
            f"(@keras.saving.register_keras_serializable()) in {entry}custom_modules: [file.py]"
        )
    first = text.strip().splitlines()[0] if text.strip() else ""
    return (
        f"{path}: not a loadable Keras model ({type(error).__name__}: {first[:300]}); save it "
        "with model.save('name.keras')"
    )


def _named(names: list[str], cls: str) -> str:
    if not names:
        return f"a layer of class {cls}"
    quoted = ", ".join(repr(n) for n in names)
    return f"layer{'s' if len(names) > 1 else ''} {quoted} ({cls})"


def _layers_of_class(path: Path, cls: str) -> list[str]:
    """The names of the layers of class `cls` in a saved model's config (nested models
    included), read from the file itself: config.json of a .keras archive, the
    model_config attribute of an .h5 file. Empty when it cannot be read."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
        else:
            import h5py

            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
                config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except Exception:  # noqa: BLE001 - only for the message
        return []
    found = [
        node["config"].get("name", "?")
        for node in layer_configs(config)
        if cls in (node["class_name"], str(node.get("registered_name") or "").split(">")[-1])
    ]
    return list(dict.fromkeys(found))


def layer_configs(config):
    """Every serialized object of a saved model's config (the model, its layers, nested
    models' layers): the dicts with a "class_name" and a "config" dict, outermost first.
    The caller may edit a yielded node's "config" before the walk goes into it."""
    if isinstance(config, dict):
        if "class_name" in config and isinstance(config.get("config"), dict):
            yield config
        for value in config.values():
            yield from layer_configs(value)
    elif isinstance(config, list):
        for value in config:
            yield from layer_configs(value)

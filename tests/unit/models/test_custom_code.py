"""The user's own code (quantflow.models.custom): a registered layer loads once its module
is named in custom_modules, a Lambda only with unsafe_deserialization (and a warning), and
each refusal is one line naming the layer, its class and the config key to set. Each load
runs in a fresh Python process, as a job does, so nothing is registered beforehand."""

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

MODULE = """
import keras


@keras.saving.register_keras_serializable(package="mine")
class ChannelScale(keras.layers.Layer):
    def build(self, shape):
        self.s = self.add_weight(shape=(shape[-1],), initializer="ones", name="s")

    def call(self, x):
        return x * self.s
"""


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A .keras file with the user's registered layer, and one with a Lambda."""
    work = tmp_path_factory.mktemp("custom")
    (work / "mylayers.py").write_text(MODULE)
    done = python(f"""
        import sys, keras
        sys.path.insert(0, {str(work)!r})
        from mylayers import ChannelScale
        x = keras.Input((4,))
        y = ChannelScale(name="scale")(x)
        keras.Model(x, keras.layers.Dense(2)(y)).save({str(work / "scaled.keras")!r})
        y = keras.layers.Lambda(lambda t: t * t - 0.5 * t, name="swishy")(x)
        keras.Model(x, keras.layers.Dense(2)(y)).save({str(work / "lambda.keras")!r})
        # a lambda that uses a module's names cannot be rebuilt (Keras runs its code alone)
        y = keras.layers.Lambda(lambda t: t * keras.ops.sigmoid(t), name="uses_keras")(x)
        keras.Model(x, keras.layers.Dense(2)(y)).save({str(work / "global.keras")!r})
        """)
    assert done.returncode == 0, done.stderr
    return work


def load(path, spec: dict) -> dict:
    """use_custom_code(spec) then load_keras(path) in a fresh process: the outcome."""
    done = python(f"""
        import json
        from quantflow.errors import QuantflowError
        from quantflow.models.custom import load_keras, use_custom_code
        try:
            use_custom_code({spec!r})
            model = load_keras({str(path)!r}, "mine")
            print(json.dumps({{"layers": [type(l).__name__ for l in model.layers]}}))
        except QuantflowError as e:
            print(json.dumps({{"error": str(e)}}))
        """)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_registered_layer_needs_its_module(saved):
    refused = load(saved / "scaled.keras", {})
    message = refused["error"]
    assert "'scale' (ChannelScale)" in message and "models: mine: custom_modules" in message
    assert "\n" not in message and "Full object config" not in message
    loaded = load(saved / "scaled.keras", {"custom_modules": [str(saved / "mylayers.py")]})
    assert loaded == {"layers": ["InputLayer", "ChannelScale", "Dense"]}


def test_a_lambda_needs_the_opt_in(saved):
    refused = load(saved / "lambda.keras", {})
    message = refused["error"]
    assert "'swishy' (Lambda)" in message
    assert "models: mine: unsafe_deserialization: true" in message and "\n" not in message
    assert load(saved / "lambda.keras", {"unsafe_deserialization": True}) == {
        "layers": ["InputLayer", "Lambda", "Dense"]
    }
    message = load(saved / "global.keras", {"unsafe_deserialization": True})["error"]
    assert "'uses_keras' (Lambda) could not be rebuilt" in message
    assert "models: mine: custom_modules" in message and "\n" not in message


def test_a_missing_or_broken_module_is_named(tmp_path):
    from quantflow.errors import QuantflowError
    from quantflow.models.custom import use_custom_code

    with pytest.raises(QuantflowError, match="custom_modules: .*nothere.py not found"):
        use_custom_code({"custom_modules": [str(tmp_path / "nothere.py")]})
    (tmp_path / "broken.py").write_text("raise RuntimeError('oops')\n")
    with pytest.raises(QuantflowError, match=r"importing .*broken.py failed \(RuntimeError: oops"):
        use_custom_code({"custom_modules": [str(tmp_path / "broken.py")]})

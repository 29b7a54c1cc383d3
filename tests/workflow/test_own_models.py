"""The user's own models through the real workflow: a float .tflite file written by
TensorFlow's converter, imported, fine-tuned, taken through FAT w8a8 and an adjustable
target and reported (the micro config's job sizes); a .keras model with custom layers (a
layer registered in the user's module, a Lambda, a gelu activation), whose layers with no
int8 form stay float islands; and a zoo model (MobileNetV2, alpha 0.35) exported by Keras'
SavedModel exporter. The images are resized to 32x32, the zoo's smallest input. (A TF1
frozen graph takes the same path once read: its import is checked against TensorFlow's
own output in tests/unit/models/test_zoo_exports.py and test_frozen_mnasnet.py.)"""

import json

import pytest
import yaml

from conftest import REPO, run_snakemake

pytestmark = pytest.mark.workflow

MICRO = yaml.safe_load((REPO / "tests/configs/micro.yaml").read_text())


def user_keras_model():
    import keras

    layers = keras.layers
    keras.utils.set_random_seed(5)
    x = keras.Input((32, 32, 1))
    y = layers.Rescaling(1 / 255.0)(x)
    y = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(momentum=0.999)(y)  # folded into the conv by the converter
    y = layers.ReLU(6.0)(y)
    y = layers.DepthwiseConv2D(3, padding="same")(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(16, 1, activation="relu")(y)
    y = layers.GlobalAveragePooling2D()(y)
    return keras.Model(x, layers.Dense(10)(y))


CUSTOM_MODULE = """
import keras


@keras.saving.register_keras_serializable(package="owntest")
class ChannelScale(keras.layers.Layer):
    def build(self, shape):
        self.s = self.add_weight(shape=(shape[-1],), initializer="ones", name="s")

    def call(self, x):
        return x * self.s
"""


def custom_keras_model(work):
    """Saved from a fresh process (as the user's own session would), with the module."""
    import subprocess
    import sys

    (work / "mylayers.py").write_text(CUSTOM_MODULE)
    code = f"""
import sys, keras
sys.path.insert(0, {str(work)!r})
from mylayers import ChannelScale
layers = keras.layers
keras.utils.set_random_seed(5)
x = keras.Input((32, 32, 1))
y = layers.Rescaling(1 / 255.0)(x)
y = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(y)
y = ChannelScale(name="scale")(y)
y = layers.Lambda(lambda t: t * t - 0.25 * t, name="poly")(y)
y = layers.DepthwiseConv2D(3, padding="same")(y)
y = layers.Activation("gelu", name="gelu")(y)
y = layers.Conv2D(16, 1, activation="relu")(y)
y = layers.GlobalAveragePooling2D()(y)
keras.Model(x, layers.Dense(10)(y)).save({str(work / "custom.keras")!r})
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def keras_apps_mobilenet_v2():
    """A zoo model as users export it: Keras' MobileNetV2 (alpha 0.35) for 32x32 RGB."""
    import keras

    keras.utils.set_random_seed(6)
    return keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10, classifier_activation=None
    )


@pytest.fixture(scope="module")
def own_run(tmp_path_factory, fashion_mnist_dir):
    from quantflow.deploy.convert import convert

    work = tmp_path_factory.mktemp("own")
    (work / "mine.tflite").write_bytes(convert(user_keras_model(), "fp32"))
    custom_keras_model(work)
    zoo = keras_apps_mobilenet_v2()
    zoo.export(work / "zoo_saved_model", verbose=False)  # Keras' own SavedModel exporter
    config = json.loads(json.dumps(MICRO))
    config["dataset"]["mirrors"] = [f"file://{fashion_mnist_dir}"]
    config["dataset"]["image_size"] = [32, 32]  # the zoo's smallest input
    config["models"] = {
        "lite": {"arch": "tflite_file", "path": str(work / "mine.tflite")},
        "custom": {
            "arch": "keras_file",
            "path": str(work / "custom.keras"),
            "custom_modules": [str(work / "mylayers.py")],
            "unsafe_deserialization": True,
        },
        "zoo": {"arch": "saved_model", "path": str(work / "zoo_saved_model")},
    }
    # what the issue asks of these models: FAT and adjustable (weight-only and FAT's
    # simulation variant run on the same Keras model in the tiny workflow tests)
    config["weightquant"]["algorithms"] = []
    config["fat"]["simulate"] = False
    # three models: the smallest FAT and adjustable jobs that still train (the micro
    # config's halves)
    config["fat"].update(images=50, validation_images=25, batch_size=25, check_images=25)
    config["adjustable"].update(images=50, validation_images=25, batch_size=25, check_images=25)
    cfg = work / "own.yaml"
    cfg.write_text(yaml.safe_dump(config))
    run_snakemake(work, cfg, "--cores", "2")
    return work


@pytest.mark.parametrize("model", ["lite", "custom", "zoo"])
def test_an_imported_model_goes_through_fat_and_adjustable(own_run, model):
    work = own_run
    records = {
        r["variant"]: r
        for r in json.loads((work / "results/summary.json").read_text())
        if r["model"] == model
    }
    for variant in ("tflite-fp32", "fat-w8a8-sym-pc", "adjq-m0", "adjq-m0-int8"):
        assert variant in records, (model, variant)
    train = json.loads((work / f"results/fashion_mnist/{model}/float/train.json").read_text())
    assert train["arch"] in ("tflite_file", "keras_file", "saved_model")
    assert "check" in train
    check = json.loads(
        (work / f"results/fashion_mnist/{model}/fat/w8a8-sym-pc/tflite.json").read_text()
    )
    assert check["top1_agreement"] >= 0.98 and check["activation_grid_mismatches"] == []
    md = (work / "results/summary.md").read_text()
    assert f"### fashion_mnist / {model}" in md


@pytest.mark.parametrize("model", ["lite", "custom"])
def test_the_float_check_decides_whether_a_verdict_is_given(own_run, model):
    """One epoch on 600 images may leave a model at chance: then its train log warns and
    the report withholds its verdict with the reason; otherwise the verdict is there."""
    train = json.loads((own_run / f"results/fashion_mnist/{model}/float/train.json").read_text())
    md = (own_run / "results/summary.md").read_text()
    section = md[md.index(f"### fashion_mnist / {model}") :]
    section = section[: section.index("One test image is")]
    log = (own_run / f"logs/train/fashion_mnist/{model}.log").read_text()
    if train["check"]["status"] == "near_chance":
        assert "WARNING: the float model is at chance" in log
        assert "No verdict: the float reference is at chance" in section
        assert "**Smallest within" not in section
    else:
        assert "**Smallest within" in section and "No verdict" not in section


def test_custom_layers_load_in_every_job_and_stay_float_islands(own_run):
    """The user's module is imported and the Lambda opted in by every job that loads the
    model; the registered layer, the Lambda and the gelu are float islands in FAT's
    simulation and its int8 file (float ops there, file and simulation agreeing), counted as
    float by the MicroNet count, and the report says so."""
    work = own_run
    base = work / "results/fashion_mnist/custom"
    assert (
        "WARNING: unsafe_deserialization is on"
        in (work / "logs/train/fashion_mnist/custom.log").read_text()
    )
    fat = json.loads((base / "fat/w8a8-sym-pc/fat.json").read_text())
    islands = [(i["layer"], i["class"]) for i in fat["float_islands"]]
    assert islands == [("scale", "ChannelScale"), ("poly", "Lambda"), ("gelu", "Activation")]
    check = json.loads((base / "fat/w8a8-sym-pc/tflite.json").read_text())
    ops = {i["layer"]: i["float_ops"] for i in check["float_islands"]}
    assert ops["scale"] == ["MUL"] and ops["gelu"] == ["GELU"] and "MUL" in ops["poly"]
    assert check["top1_agreement"] >= 0.98 and check["activation_grid_mismatches"] == []
    counts = json.loads((base / "micronet.json").read_text())
    assert counts["float_layers"] == ["scale", "poly", "gelu"]
    adjustable = json.loads((base / "adjustable/m0/tflite.json").read_text())
    assert [i["layer"] for i in adjustable["float_islands"]] == ["scale", "poly", "gelu"]
    md = (work / "results/summary.md").read_text()
    assert "`custom` `w8a8-sym-pc`: float islands" in md
    assert "MicroNet score of `fashion_mnist / custom`: 3 layer(s) with no int8 form" in md

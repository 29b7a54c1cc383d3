"""Post-training quantization with the TFLite converter (quantflow.deploy.convert): every format
converts and runs in LiteRT on a tiny model, uint8 I/O round-trips through the evaluator,
and the calibration studies select the right images (seeded)."""

import numpy as np
import pytest

from quantflow.deploy.formats import AEQ_FORMATS, needs_calibration, parse_format
from quantflow.deploy.convert import convert, save, select_calibration
from quantflow.deploy.aeq import quantize_with_aeq
from quantflow.errors import QuantflowError


def test_format_names():
    assert parse_format("fp16") == {"base": "fp16", "calibration": None}
    assert parse_format("int8-cal100")["calibration"] == {"count": 100}
    assert parse_format("int8-cal5pct")["calibration"] == {"percent": 5}
    assert parse_format("int8-class3")["calibration"] == {"class": 3}
    for bad in ("int4", "fp16-cal10", "int8-cal0", "int8-cal101pct", "int8-", "dynamic-class1"):
        with pytest.raises(QuantflowError):
            parse_format(bad)
    assert needs_calibration("int16x8") and not needs_calibration("dynamic")


def test_calibration_selection_is_seeded_nested_and_by_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=3000)
    a = select_calibration(labels, "int8-cal100", 500, seed=7)
    assert len(a) == 100 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, select_calibration(labels, "int8-cal100", 9, 7))
    assert not np.array_equal(a, select_calibration(labels, "int8-cal100", 500, 8))
    # a sweep's samples are nested: the 100 are among the 1000
    b = select_calibration(labels, "int8-cal1000", 500, seed=7)
    assert set(a) <= set(b)
    # percentages of the training set
    assert len(select_calibration(labels, "int8-cal10pct", 500, 7)) == 300
    # the baseline: calibration_images of them
    assert len(select_calibration(labels, "int8", 500, 7)) == 500
    # one class only: that many images of class 3, all of class 3
    c = select_calibration(labels, "int8-class3", 50, seed=7)
    assert len(c) == 50 and set(labels[c]) == {3}
    np.testing.assert_array_equal(c, select_calibration(labels, "int8-class3", 50, 7))
    # fewer images of the class than asked: all of them
    few = np.array([0] * 100 + [5] * 7)
    assert len(select_calibration(few, "int8-class5", 50, 7)) == 7
    with pytest.raises(QuantflowError, match="no image of class 4"):
        select_calibration(few, "int8-class4", 50, 7)


@pytest.fixture(scope="module")
def model_and_images():
    keras = pytest.importorskip("keras")
    layers = keras.layers
    keras.utils.set_random_seed(1)
    x = keras.Input((8, 8, 1))
    y = layers.Rescaling(1 / 255.0)(x)
    y = layers.Conv2D(8, 3, padding="same", activation="relu")(y)
    y = layers.DepthwiseConv2D(3, padding="same", activation="relu")(y)
    y = layers.GlobalAveragePooling2D()(y)
    y = layers.Dense(5)(y)
    model = keras.Model(x, y)
    images = np.random.default_rng(2).uniform(0, 255, size=(64, 8, 8, 1)).astype(np.float32)
    return model, images


@pytest.mark.parametrize(
    "fmt, io, input_dtype",
    [
        ("fp32", "int8", "float32"),
        ("fp16", "int8", "float32"),
        ("dynamic", "int8", "float32"),
        ("int8", "int8", "int8"),
        ("int8", "uint8", "uint8"),
        ("int16x8", "int8", "float32"),
    ],
)
def test_every_format_converts_and_runs(model_and_images, tmp_path, fmt, io, input_dtype):
    from quantflow.deploy.litert import TFLiteRunner
    from quantflow.evaluate.accuracy import io_quantization

    model, images = model_and_images
    calibration = images[:32] if needs_calibration(fmt) else None
    path = tmp_path / f"{fmt}-{io}.tflite"
    types = save(convert(model, fmt, calibration, io=io), path)
    assert types["input"] == input_dtype
    runner = TFLiteRunner(path)
    scores = runner.scores(runner.run(runner.prepare(images)))
    reference = np.asarray(model(images))
    spread = float(reference.max() - reference.min())
    # float formats are (nearly) exact; quantized ones within a few percent of the range
    tolerance = {"fp32": 1e-5, "fp16": 1e-2, "dynamic": 0.05, "int8": 0.05, "int16x8": 0.05}
    assert np.max(np.abs(scores - reference)) <= tolerance[fmt] * spread
    record = io_quantization(runner)
    assert record["input_dtype"] == input_dtype
    if input_dtype == "uint8":  # the model's own scale and zero point, in uint8's range
        assert record["output_dtype"] == "uint8"
        assert record["input_scale"] > 0 and 0 <= record["input_zero_point"] <= 255
    elif input_dtype == "float32":
        assert record["input_scale"] is None and record["input_zero_point"] is None


def test_uint8_and_int8_io_predict_the_same(model_and_images, tmp_path):
    """The same calibration with uint8 or int8 I/O: the evaluator's quantization of the
    inputs and dequantization of the outputs by each model's own parameters gives the
    same scores (zero points 128 apart)."""
    from quantflow.deploy.litert import TFLiteRunner

    model, images = model_and_images
    scores = {}
    for io in ("int8", "uint8"):
        path = tmp_path / f"{io}.tflite"
        save(convert(model, "int8", images[:32], io=io), path)
        runner = TFLiteRunner(path)
        scores[io] = runner.scores(runner.run(runner.prepare(images)))
        zero = runner.input["quantization"][1]
        assert zero == (-128 if io == "int8" else 0)  # pixels 0..255: [0, 255] is the range
    np.testing.assert_allclose(scores["uint8"], scores["int8"], rtol=0, atol=1e-6)


def test_every_variant_has_uniform_bits_for_its_score():
    from quantflow.variants import variant_bits

    for variant in (
        "keras-float",
        "tflite-fp32",
        "tflite-fp16",
        "tflite-dynamic",
        "tflite-int8",
        "tflite-int8-cal100",
        "tflite-int8-cal5pct",
        "tflite-int8-class3",
        "tflite-int16x8",
        "tflite-int4-weights",
        "tflite-dynamic-int4",
        "bin-4",
        "fixed-8",
        "fat-w4a8-sym-pc",
    ):
        assert variant_bits(variant) is not None, variant
    assert variant_bits("tflite-int8-cal10")["activation_bits"] == 8
    assert variant_bits("tflite-int4-weights")["weight_bits"] == 4
    assert variant_bits("adjq-s24") is None  # its own per-channel bits


def test_int4_weights_by_ai_edge_quantizer(tmp_path):
    """ai-edge-quantizer's int4 recipes on an fp32 model: the kernels become 4-bit codes
    (int4 tensors, values in [-8, 7]), the file shrinks, outputs stay close to float."""
    pytest.importorskip("ai_edge_quantizer")
    keras = pytest.importorskip("keras")
    from ai_edge_litert.interpreter import Interpreter

    from quantflow.deploy.litert import TFLiteRunner

    keras.utils.set_random_seed(3)
    x = keras.Input((8, 8, 1))
    y = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(x))
    y = keras.layers.Dense(128, activation="relu")(y)
    model = keras.Model(x, keras.layers.Dense(5)(y))
    images = np.random.default_rng(4).uniform(0, 255, size=(32, 8, 8, 1)).astype(np.float32)
    fp32 = tmp_path / "fp32.tflite"
    save(convert(model, "fp32"), fp32)
    reference = np.asarray(model(images))
    for fmt in AEQ_FORMATS:
        path = tmp_path / f"{fmt}.tflite"
        save(quantize_with_aeq(fp32, fmt), path)
        assert path.stat().st_size < fp32.stat().st_size / 4
        runner = TFLiteRunner(path)
        scores = runner.scores(runner.run(runner.prepare(images)))
        spread = float(reference.max() - reference.min())
        assert np.max(np.abs(scores - reference)) <= 0.1 * spread
        interp = Interpreter(model_path=str(path))
        kernel = next(
            d for d in interp.get_tensor_details() if list(d["shape"]) == [128, 64]
        )  # the first Dense, [out, in]
        codes = interp.get_tensor(kernel["index"])  # int4 values, read out as int8
        assert codes.dtype == np.int8 and -8 <= codes.min() and codes.max() <= 7
        assert 8 <= np.unique(codes).size <= 16
        assert len(kernel["quantization_parameters"]["scales"]) == 128  # per channel
    with pytest.raises(QuantflowError, match="unknown ai-edge-quantizer format"):
        quantize_with_aeq(fp32, "int3")


def test_static_int4_by_ai_edge_quantizer(model_and_images, tmp_path):
    """ai-edge-quantizer's static recipe at int4 weights: CONV_2D and FULLY_CONNECTED
    kernels INT4, DEPTHWISE_CONV_2D int8, activations int8 on ranges calibrated from the
    images fed as one batch (equal to the TF converter's int8 ranges on the same images,
    so the int4 model's only difference from tflite-int8 is its weights)."""
    pytest.importorskip("ai_edge_quantizer")
    from quantflow.deploy.aeq import quantize_static_with_aeq
    from quantflow.deploy.check import activation_ranges
    from quantflow.deploy.int4 import weight_storage
    from quantflow.deploy.litert import TFLiteRunner

    model, images = model_and_images
    fp32 = tmp_path / "fp32.tflite"
    save(convert(model, "fp32"), fp32)
    path = tmp_path / "static-int4.tflite"
    save(quantize_static_with_aeq(fp32, "static-int4", images), path)
    storage = weight_storage(path)
    assert (storage["int4"], storage["int8"]) == (2, 1)  # conv + dense INT4, depthwise int8
    int8 = tmp_path / "int8.tflite"
    save(convert(model, "int8", images), int8)
    ours = {round(r["scale"], 7) for r in activation_ranges(path)}
    theirs = {round(r["scale"], 7) for r in activation_ranges(int8)}
    assert theirs <= ours  # every converter range is there (its model adds I/O tensors)
    runner = TFLiteRunner(path)
    scores = runner.scores(runner.run(runner.prepare(images)))
    reference = np.asarray(model(images))
    assert np.max(np.abs(scores - reference)) <= 0.15 * float(reference.max() - reference.min())
    with pytest.raises(QuantflowError, match="unknown ai-edge-quantizer static format"):
        quantize_static_with_aeq(fp32, "static-int3", images)

"""The TFLite lab's questions answered from the run's numbers (quantflow.report.ptq): the
sentences follow the numbers, ties are called ties, the calibration plot is drawn."""

import numpy as np
import pytest

from quantflow.report.ptq import calibration_points, compare, plot_calibration, ptq_study

INFO = {"sizes": {"train": 50000}, "class_names": [f"c{i}" for i in range(10)]}


def record(variant, accuracy, g_mean=None, size=1000, ms=0.1):
    return {
        "dataset": "d",
        "model": "m",
        "variant": variant,
        "accuracy": accuracy,
        "g_mean": accuracy if g_mean is None else g_mean,
        "size_bytes": size,
        "ms_per_image_b1": ms,
        "num_samples": 10000,
    }


def records(cal=(0.90, 0.905, 0.91), one_class=0.80):
    return [
        record("keras-float", 0.9100, ms=0.5),
        record("tflite-fp32", 0.9100, size=4000, ms=0.1),
        record("tflite-int8", 0.9090, size=1000, ms=0.05),
        *[record(f"tflite-int8-cal{n}", a) for n, a in zip((10, 100, 1000), cal)],
        record("tflite-int8-cal2pct", cal[-1]),
        record("tflite-int8-class3", one_class),
    ]


def test_compare_calls_a_few_images_a_tie():
    assert compare(0.03, 10000).startswith("a tie (+0.03 pp, 3 test images")
    assert compare(-0.50, 10000) == "lower by 0.50 pp (50 test images)"
    assert compare(0.06, 10000).startswith("higher by 0.06 pp (6 test images")


def test_calibration_points_sorted_with_percentages():
    points = calibration_points(records(), 50000)
    assert [p["images"] for p in points] == [10, 100, 1000, 1000]  # 2% of 50,000
    assert points[-1]["variant"] == "tflite-int8-cal2pct"


def test_sentences_follow_the_numbers():
    study = ptq_study(records(), INFO, {"params": 1234})
    text = "\n".join(study["sentences"])
    assert "tflite-fp32 against the native Keras model: top-1 91.00% vs 91.00%, a tie" in text
    assert "5.0x faster in LiteRT" in text
    assert "The best int8 model, tflite-int8-cal1000, against" in text
    assert "rises with the calibration size: 90.00% at 10 images, 91.00% at 1000" in text
    assert "Calibrated on class 3 (c3) only, int8 reaches 80.00%" in text
    assert "lower by 10.90 pp (1090 test images) against tflite-int8" in text
    assert "below the calibration-size study's range 90.00-91.00%" in text
    assert "1,234 parameters" in text and "4.0x smaller (a 75% size reduction)" in text
    # other numbers, other sentences
    flat = "\n".join(
        ptq_study(records(cal=(0.9100, 0.9102, 0.9101), one_class=0.9101), INFO)["sentences"]
    )
    assert "flat: every calibration size within 2 test images (a tie)" in flat
    assert "Calibrated on class 3 (c3) only, int8 reaches 91.01%" in flat
    assert "inside the calibration-size study's range" in flat
    falling = "\n".join(ptq_study(records(cal=(0.92, 0.91, 0.90)), INFO)["sentences"])
    assert "falls with the calibration size" in falling


def right_on(*ranges):
    credit = np.zeros(10000)
    for lo, hi in ranges:
        credit[lo:hi] = 1.0
    return credit


def test_wins_and_ties_by_the_paired_test_and_the_best_int8_by_fidelity():
    rows = records()
    credits = {
        "keras-float": right_on((0, 9100)),
        "tflite-fp32": right_on((0, 9100)),
        "tflite-int8": right_on((0, 9090)),
        "tflite-int8-cal10": right_on((0, 9000)),
        "tflite-int8-cal100": right_on((0, 9050)),
        # 0.1 pp above int8, but 50 images one way and 40 the other: a tie
        "tflite-int8-cal1000": right_on((0, 9000), (9040, 9140)),
        "tflite-int8-cal2pct": right_on((0, 9000), (9040, 9140)),
        "tflite-int8-class3": right_on((0, 8000)),
    }
    for r in rows:
        r["agreement"] = 0.995 if r["variant"] == "tflite-int8" else 0.98
        r["output_snr_db"] = 36.5 if r["variant"] == "tflite-int8" else 30.0
    r = next(r for r in rows if r["variant"] == "tflite-int8-cal2pct")
    r["agreement"] = 0.999  # more images agree, but its outputs are further: SNR decides
    text = "\n".join(ptq_study(rows, INFO, credits=credits)["sentences"])
    # the most accurate (cal1000) ties with int8 and cal2pct: the most faithful is the best
    assert (
        "The best int8 model, tflite-int8 (2 other int8 models tie at the top by the paired "
        "test; this one is the closest to tflite-fp32's outputs: output SNR 36.5 dB, the same "
        "top-1 on 99.50% of the images)" in text
    )
    # 10 images only fp32 gets right and none the other way: p = 2/1024, a real loss
    assert "lower by 0.10 pp (10 test images; p 0.002, 10 images differ)" in text
    assert "a tie (+0.00 pp; p 1, 0 images differ)" in text  # fp32 against Keras
    assert "lower by 10.90 pp (1090 test images; p " in text  # class 3 against int8
    # 10 to 1000 calibration images: 100 images more right, none fewer: a real rise
    assert "top-1 rises with the calibration size" in text
    # the extremes 5 images apart, all one way: p = 0.0625, flat
    flat = {**credits, "tflite-int8-cal10": right_on((0, 9000), (9045, 9140))}
    for v in ("tflite-int8-cal100", "tflite-int8-cal2pct"):
        flat[v] = credits["tflite-int8-cal1000"]
    rows = records(cal=(0.9095, 0.9100, 0.9100))
    text = "\n".join(ptq_study(rows, INFO, credits=flat)["sentences"])
    assert (
        "top-1 flat: the best and worst calibration sizes (100 and 10 images, 0.05 pp apart) "
        "tie by the paired test (p 0.062, 5 images differ)" in text
    )


def test_float_fallback_sentence():
    rows = records() + [
        record("tflite-int8-float1", 0.9095, size=1100, ms=0.06),
        record("tflite-int8-float2", 0.9150, size=1500, ms=0.10),
    ]
    text = "\n".join(ptq_study(rows, INFO)["sentences"])
    assert (
        "1 layer: 90.95%, a tie (+0.05 pp, 5 test images), 1.10x the size, 1.20x the time" in text
    )
    assert "2 layers: 91.50%, higher by 0.60 pp (60 test images), 1.50x the size" in text


def test_calibration_plot(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    path = tmp_path / "cal.png"
    plot_calibration([ptq_study(records(), INFO)], path)
    pixels = image.imread(path)
    assert (
        pixels.shape[0] > 100 and len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 10
    )
    empty = tmp_path / "empty.png"
    plot_calibration([ptq_study(records()[:3], INFO)], empty)
    assert empty.stat().st_size > 0

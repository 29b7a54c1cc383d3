"""INT4 weights in the deployable file (quantflow.deploy.int4): a FAT model with 4-bit
kernels converts to a LiteRT model that stores them as INT4 on the trained grid, agrees with
its simulation, and is smaller than the 8-bit file by half the kernels' bytes; the
simulation's requantization of an INT4 layer is TFLite's built-in one (checked against a
reimplementation with Python integers written from the gemmlowp definition)."""

import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from quantflow.deploy import check as deploy_check  # noqa: E402
from quantflow.deploy.int4 import int4_kernels, unpack_int4, weight_storage  # noqa: E402
from quantflow.models.tiny_mobilenet import tiny_mobilenet  # noqa: E402
from quantflow.quant.calibrate import calibrate  # noqa: E402
from quantflow.quant.ops import requantized_builtin  # noqa: E402
from quantflow.quant.transform import fake_quant_model  # noqa: E402

SIZE, CLASSES = 16, 4


def _images(n, seed):
    """Stripes of four orientations plus noise, integer pixels (a learnable toy task)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    coords = np.stack([yy, xx, yy + xx, yy - xx])[labels]
    x = 128 + 60 * np.sin(2 * np.pi * coords / rng.uniform(3, 6, (n, 1, 1)))
    x = x[..., None] + rng.normal(0, 20, (n, SIZE, SIZE, 1))
    return np.clip(np.round(x), 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = tiny_mobilenet((SIZE, SIZE, 1), CLASSES, width=0.5, head=64)
    x, y = _images(1024, 0)
    model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x.astype(np.float32), y, batch_size=64, epochs=3, verbose=0)
    root = tmp_path_factory.mktemp("int4")
    for name, seed in (("train", 0), ("val", 1)):
        images, labels = _images(400, seed)
        np.savez(root / f"{name}.npz", images=images, labels=labels)
    from quantflow.data.splits import Split

    return model, Split(root / "train.npz"), Split(root / "val.npz")


def _exported(model, train, val, path, weight_bits):
    qmodel = fake_quant_model(model, weight_bits=weight_bits, activation_bits=8)
    calibrate(qmodel, train.take(np.arange(64)), 8)
    check = deploy_check.convert_checked(qmodel, path, train, val, seed=0, check_images=400)
    return qmodel, check


def test_fat_w4a8_file_stores_int4_and_agrees_with_its_simulation(splits, tmp_path):
    model, train, val = splits
    q8, check8 = _exported(model, train, val, tmp_path / "w8.tflite", 8)
    q4, check4 = _exported(model, train, val, tmp_path / "w4.tflite", 4)
    print(deploy_check.describe_check(check4))
    layers = len(int4_kernels(q4))
    assert layers == 11 and int4_kernels(q8) == []  # 5 conv, 4 depthwise, 2 dense
    storage = check4["weight_storage"]
    assert storage["int4"] == layers and storage["int8"] == 0 and storage["max_levels"] <= 15
    assert check8["weight_storage"]["int4"] == 0
    # half the kernel bytes (an odd count rounds up to a whole byte)
    weights = sum(k.values.size for k in int4_kernels(q4))
    assert storage["int4_bytes"] == sum(math.ceil(k.values.size / 2) for k in int4_kernels(q4))
    assert check8["weight_storage"]["int8_bytes"] == weights
    saved = (tmp_path / "w8.tflite").stat().st_size - (tmp_path / "w4.tflite").stat().st_size
    assert abs(saved - (weights - storage["int4_bytes"])) < 0.02 * weights
    # the bar of the int8 export: LiteRT's INT4 model reproduces its simulation
    assert check4["images"] == 400 and check4["top1_agreement"] >= 0.995
    assert check4["top1_agreement_clear_margin"] in (None, 1.0)
    assert check4["mean_abs_logit_difference_steps"] <= 0.5
    assert check4["activation_grid_mismatches"] == []


def test_int4_codes_and_biases_are_the_simulations(splits, tmp_path):
    """Read back from the file: every INT4 kernel's codes are the simulation's b-bit integers
    and its scale the simulation's step; the int32 bias is round(b / (s_in x step))."""
    from ai_edge_litert.tools import flatbuffer_utils

    model, train, val = splits
    qmodel, _ = _exported(model, train, val, tmp_path / "w4.tflite", 4)
    tfl = flatbuffer_utils.read_model(str(tmp_path / "w4.tflite"))
    graph = tfl.subgraphs[0]
    kernels = {k.values.shape: k for k in int4_kernels(qmodel)}
    found = 0
    for op in graph.operators:
        if flatbuffer_utils.opcode_to_name(tfl, op.opcodeIndex) not in (
            "CONV_2D",
            "DEPTHWISE_CONV_2D",
            "FULLY_CONNECTED",
        ):
            continue
        tensor = graph.tensors[op.inputs[1]]
        codes = unpack_int4(tfl, tensor)
        kernel = next(
            k
            for k in int4_kernels(qmodel)
            if k.values.shape == codes.shape
            and np.allclose(
                codes
                * np.asarray(tensor.quantization.scale).reshape(
                    [-1 if i == k.axis else 1 for i in range(codes.ndim)]
                ),
                k.values,
                atol=1e-6,
            )
        )
        step = kernel.step.reshape([-1 if i == kernel.axis else 1 for i in range(codes.ndim)])
        np.testing.assert_array_equal(codes, np.rint(kernel.values / step))
        np.testing.assert_allclose(tensor.quantization.scale, kernel.step, rtol=1e-6)
        layer = qmodel.get_layer(kernel.layer)
        bias = graph.tensors[op.inputs[2]]
        data = np.frombuffer(
            np.asarray(tfl.buffers[bias.buffer].data, np.uint8).tobytes(), np.int32
        )
        s_in = float(layer._input_step())
        np.testing.assert_allclose(
            np.asarray(bias.quantization.scale), s_in * kernel.step, rtol=1e-5
        )
        expected = np.rint(np.asarray(layer.bias) / (s_in * kernel.step.astype(np.float64)))
        assert np.abs(data - expected).max() <= 1  # a tie may round either way
        assert (data == expected).mean() >= 0.99
        found += 1
    assert found == len(kernels) or found == len(int4_kernels(qmodel))
    assert weight_storage(tmp_path / "w4.tflite")["int4"] == found


def _gemmlowp(acc: int, multiplier: float) -> int:
    """TFLite's MultiplyByQuantizedMultiplier with Python integers, from its definition."""
    frac, shift = math.frexp(multiplier)
    q = int(math.floor(abs(frac) * 2**31 + 0.5))
    if q == 2**31:
        q //= 2
        shift += 1
    left, right = max(shift, 0), max(-shift, 0)
    ab = acc * (1 << left) * q
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    high = int((ab + nudge) / (1 << 31)) if abs(ab + nudge) < 2**52 else None
    if high is None:  # exact truncating division for large values
        num = ab + nudge
        high = num // (1 << 31) if num >= 0 else -((-num) // (1 << 31))
    mask = (1 << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if remainder > threshold else 0)


def test_builtin_requantization_is_gemmlowp():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    acc = rng.integers(-(2**20), 2**20, (64, 8)).astype(np.float32)
    acc[0, :] = [0, 1, -1, 2**19, -(2**19), 12345, -12345, 7]
    s_in = np.float32(0.0173)
    s_w = rng.uniform(1e-3, 5e-2, 8).astype(np.float32)
    s_out = np.float32(0.9)
    got = np.asarray(requantized_builtin(tf.constant(acc), s_in, tf.constant(s_w), s_out, "linear"))
    got = np.rint(got / s_out).astype(np.int64)
    for c in range(8):
        multiplier = float(s_in) * float(s_w[c]) / float(s_out)
        want = [_gemmlowp(int(a), multiplier) for a in acc[:, c]]
        np.testing.assert_array_equal(got[:, c], want)
    # worked by hand: multiplier 0.375 = 0.75 * 2**-1 (q = 0.75 * 2**31, shift -1).
    # acc 5: 3.75 + 0.5 -> 4 (truncated), 4 >> 1 = 2; acc 3: 2.25 + 0.5 -> 2, then 1;
    # acc 7: 5.25 + 0.5 -> 5, 5 / 2 = 2.5 -> 3 (half away from zero); acc -7: -5.75 -> -5,
    # -2.5 -> -3
    one = requantized_builtin(
        tf.constant([[5.0, 3.0, 7.0, -7.0]]), 0.375, tf.constant([1.0] * 4), 1.0, "linear"
    )
    np.testing.assert_array_equal(np.rint(np.asarray(one)), [[2, 1, 3, -3]])
    # where two roundings differ from one: multiplier 0.125 = 0.5 * 2**-2, acc 3:
    # 1.5 + 0.5 -> 2, then 2 / 4 = 0.5 -> 1; one rounding of 3 / 8 = 0.375 gives 0
    two = requantized_builtin(tf.constant([[3.0]]), 0.125, tf.constant([1.0]), 1.0, "linear")
    assert np.rint(np.asarray(two))[0, 0] == 1 == _gemmlowp(3, 0.125)
    # ReLU6 clamps at round(6 / s_out) steps, ReLU at 0
    six = requantized_builtin(tf.constant([[1000.0, -9.0]]), 0.5, tf.constant([1.0]), 0.5, "relu6")
    np.testing.assert_array_equal(np.rint(np.asarray(six) / 0.5), [[12, 0]])

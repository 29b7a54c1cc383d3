"""The deployable form of a fixed-point weight-only checkpoint (quantflow.deploy.weightonly):
its LiteRT file holds the checkpoint's kernel codes (int8, INT4 at <= 4 bits; folded
BatchNorm and input scaling as one factor per channel) behind DEQUANTIZE ops, and its
outputs equal the checkpoint run by TensorFlow within float rounding."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
layers = keras.layers

from quantflow.deploy.int4 import unpack_int4  # noqa: E402
from quantflow.deploy.weightonly import export_checked, weight_only_kernels  # noqa: E402
from quantflow.errors import QuantflowError  # noqa: E402
from quantflow.formats.weights import extract_weights, rebuild_model  # noqa: E402
from quantflow.quant.weightonly.apply import quantize_weights  # noqa: E402


def model_with_batchnorm():
    keras.utils.set_random_seed(4)
    x = keras.Input((12, 12, 1), name="image")
    y = layers.Rescaling(1 / 255.0, name="scale")(x)
    y = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(y)
    y = layers.BatchNormalization(name="bn")(y)
    y = layers.ReLU(6.0)(y)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(y)
    y = layers.BatchNormalization(name="dw_bn")(y)
    y = layers.ReLU()(y)
    y = layers.GlobalAveragePooling2D()(y)
    model = keras.Model(x, layers.Dense(5, name="logits")(y))
    rng = np.random.default_rng(0)
    for name in ("bn", "dw_bn"):
        bn = model.get_layer(name)
        bn.moving_mean.assign(rng.normal(0, 0.1, 8).astype(np.float32))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, 8).astype(np.float32))
        # a negative gamma flips its channel: the sign goes into the codes
        bn.gamma.assign(rng.choice([-1.0, 1.0], 8).astype(np.float32) * rng.uniform(0.5, 2, 8))
    return model


@pytest.mark.parametrize("bits, storage", [(8, "int8"), (4, "int4")])
def test_fixed_point_file_holds_the_codes_and_equals_the_checkpoint(tmp_path, bits, storage):
    from ai_edge_litert.tools import flatbuffer_utils

    quantized, errors = quantize_weights(extract_weights(model_with_batchnorm()), "fixed", bits)
    model = rebuild_model(quantized)
    images = np.random.default_rng(1).uniform(0, 255, (64, 12, 12, 1)).astype(np.float32)
    path = tmp_path / "m.tflite"
    check = export_checked(model, errors["fixed_point"], path, images)
    assert "DEQUANTIZE" in check["ops"] and check["float_kernels"] == []
    assert check["weight_storage"][storage] == 3 and check["weight_storage"]["other"] == 0
    # float rounding: the size of the plain fp32 file's own difference
    assert check["max_abs_difference"] <= max(4 * check["fp32_max_abs_difference"], 1e-6)
    assert check["max_abs_difference"] <= 1e-5 * check["max_abs_output"]
    assert check["top1_agreement"] == 1.0
    # 72 + 72 + 40 weights: a byte each as int8, half a byte as INT4
    assert check["weight_storage"][f"{storage}_bytes"] == {8: 184, 4: 92}[bits]
    # the codes in the file are the checkpoint's, up to each channel's sign
    kernels = {k.codes.shape: k for k in weight_only_kernels(model, errors["fixed_point"])[0]}
    tfl = flatbuffer_utils.read_model(str(path))
    graph = tfl.subgraphs[0]
    read = 0
    for op in graph.operators:
        if flatbuffer_utils.opcode_to_name(tfl, op.opcodeIndex) != "DEQUANTIZE":
            continue
        tensor = graph.tensors[op.inputs[0]]
        if tensor.type == 17:
            codes = unpack_int4(tfl, tensor)
        else:
            raw = np.asarray(tfl.buffers[tensor.buffer].data, np.uint8).tobytes()
            codes = np.frombuffer(raw, np.int8).reshape(tuple(tensor.shape))
        kernel = kernels[codes.shape]
        flat = np.moveaxis(codes, kernel.axis, 0).reshape(codes.shape[kernel.axis], -1)
        want = np.moveaxis(kernel.codes, kernel.axis, 0).reshape(flat.shape)
        np.testing.assert_array_equal(np.abs(flat), np.abs(want))
        for c in range(len(flat)):
            assert np.all(flat[c] == want[c]) or np.all(flat[c] == -want[c])
        read += 1
    assert read == 3


def test_a_kernel_not_on_its_grid_is_refused():
    quantized, errors = quantize_weights(extract_weights(model_with_batchnorm()), "fixed", 8)
    model = rebuild_model(quantized)
    formats = dict(errors["fixed_point"])
    formats["conv/kernel"] = {**formats["conv/kernel"], "fractional_bits": 1}
    with pytest.raises(QuantflowError, match="not on the grid"):
        weight_only_kernels(model, formats)

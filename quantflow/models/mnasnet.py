"""MNasNet-A1 (Tan et al., "MnasNet: Platform-Aware Neural Architecture Search for Mobile",
CVPR 2019) as a Keras 3 functional model made only of standard layers.

The layout follows the paper's Figure 7 and the reference TPU implementation
(`mnasnet_models.py`, blocks 'r1_k3_s11_e1_i32_o16_noskip' ... 'r1_k3_s11_e6_i160_o320'):

    stem     conv 3x3 s2, 32                    + BN + ReLU
    SepConv  depthwise 3x3 + BN + ReLU, pointwise 16 + BN           (no residual)
    MBConv6  k3, 24  x2, s2
    MBConv3  k5, 40  x3, s2, squeeze-and-excitation
    MBConv6  k3, 80  x4, s2
    MBConv6  k3, 112 x2, s1, squeeze-and-excitation
    MBConv6  k5, 160 x3, s2, squeeze-and-excitation
    MBConv6  k3, 320 x1, s1
    top      conv 1x1, 1280 + BN + ReLU, global average pooling

An MBConv block is: 1x1 expansion + BN + ReLU (left out when the ratio is 1), depthwise kxk
(stride on the first repeat) + BN + ReLU, optional SE, 1x1 projection + BN (linear), and a
residual Add when the stride is 1 and the input and output channels are equal. SE squeezes to
`int(0.25 * block input channels)` as in the reference. The depth multiplier scales the stem
and block channels (rounded by `_make_divisible` to multiples of 8); the 1280-channel top
convolution is not scaled, as in the reference. The model expects inputs already scaled
(see `quantflow.models.keras_apps`, which puts a Rescaling to [-1, 1] in front).

Parameters with a 1000-class head: 3,920,526 at depth 1.0 (the paper: 3.9M), 2,100,406 at
0.5, 2,939,110 at 0.75, 5,511,494 at 1.3; 2,639,526 at depth 1.0 without the head.
"""

from __future__ import annotations

from quantflow.errors import QuantflowError

# (expansion ratio, kernel, output channels at depth 1.0, repeats, first stride, SE ratio)
MNASNET_A1_BLOCKS = (
    (6, 3, 24, 2, 2, 0.0),
    (3, 5, 40, 3, 2, 0.25),
    (6, 3, 80, 4, 2, 0.0),
    (6, 3, 112, 2, 1, 0.25),
    (6, 5, 160, 3, 2, 0.25),
    (6, 3, 320, 1, 1, 0.0),
)
STEM_CHANNELS, SEPCONV_CHANNELS, TOP_CHANNELS = 32, 16, 1280
BN = {"momentum": 0.99, "epsilon": 1e-3}


def _make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of `divisor`, never more than 10%
    below `value` (the reference implementation's rule)."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


def _conv_bn(x, filters: int, kernel: int, strides: int, name: str, relu: bool = True):
    """Conv2D (no bias) + BatchNormalization (+ ReLU)."""
    from keras import layers

    x = layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(**BN, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _depthwise_bn_relu(x, kernel: int, strides: int, name: str):
    """DepthwiseConv2D (no bias) + BatchNormalization + ReLU."""
    from keras import layers

    x = layers.DepthwiseConv2D(
        kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_dwconv"
    )(x)
    x = layers.BatchNormalization(**BN, name=f"{name}_dw_bn")(x)
    return layers.ReLU(name=f"{name}_dw_relu")(x)


def _squeeze_excite(x, reduced: int, name: str):
    """GlobalAveragePooling (kept 4-D) -> 1x1 reduce + ReLU -> 1x1 expand + sigmoid -> scale."""
    from keras import layers

    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_squeeze")(x)
    s = layers.Conv2D(reduced, 1, activation="relu", name=f"{name}_se_reduce")(s)
    s = layers.Conv2D(channels, 1, activation="sigmoid", name=f"{name}_se_expand")(s)
    return layers.Multiply(name=f"{name}_se_excite")([x, s])


def _mbconv(x, expansion: int, kernel: int, filters: int, strides: int, se_ratio: float, name: str):
    """One inverted-residual block (MBConv) as in the reference."""
    from keras import layers

    in_channels = x.shape[-1]
    shortcut = x
    if expansion != 1:
        x = _conv_bn(x, in_channels * expansion, 1, 1, f"{name}_expand")
    x = _depthwise_bn_relu(x, kernel, strides, name)
    if se_ratio:
        x = _squeeze_excite(x, max(1, int(in_channels * se_ratio)), name)
    x = _conv_bn(x, filters, 1, 1, f"{name}_project", relu=False)
    if strides == 1 and in_channels == filters:
        x = layers.Add(name=f"{name}_add")([shortcut, x])
    return x


def mnasnet_a1(
    input_shape=None,
    depth_multiplier: float = 1.0,
    include_top: bool = False,
    *,
    classes: int = 1000,
    dropout: float = 0.2,
    input_tensor=None,
    name: str | None = None,
):
    """MNasNet-A1 with global average pooling: outputs the 1280 pooled features, or with
    `include_top` Dropout + Dense(`classes`, no activation: logits) named "predictions".

    Give `input_shape` (H, W, C) or `input_tensor` (a Keras tensor to build on, so the
    network's layers join the caller's functional model instead of nesting inside it).
    """
    import keras
    from keras import layers

    if not depth_multiplier or depth_multiplier <= 0:
        raise QuantflowError(
            f"mnasnet_a1 depth_multiplier must be a positive number, got {depth_multiplier!r}; "
            "the paper's values are 0.5, 0.75, 1.0 and 1.3"
        )
    if input_tensor is None:
        if input_shape is None:
            raise QuantflowError("mnasnet_a1 needs input_shape (H, W, C) or input_tensor")
        inputs = x = keras.Input(shape=tuple(input_shape), name="image")
    else:
        x = input_tensor
        inputs = keras.utils.get_source_inputs(input_tensor)
    width = lambda n: _make_divisible(n * depth_multiplier)  # noqa: E731

    x = _conv_bn(x, width(STEM_CHANNELS), 3, 2, "stem")
    x = _depthwise_bn_relu(x, 3, 1, "sepconv")
    x = _conv_bn(x, width(SEPCONV_CHANNELS), 1, 1, "sepconv_project", relu=False)
    for stage, (expansion, kernel, filters, repeats, strides, se) in enumerate(MNASNET_A1_BLOCKS):
        for i in range(repeats):
            x = _mbconv(
                x,
                expansion,
                kernel,
                width(filters),
                strides if i == 0 else 1,
                se,
                f"block{stage + 1}{chr(ord('a') + i)}",
            )
    x = _conv_bn(x, TOP_CHANNELS, 1, 1, "top")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        if dropout:
            x = layers.Dropout(dropout, name="top_dropout")(x)
        x = layers.Dense(classes, name="predictions")(x)
    return keras.Model(inputs, x, name=name or f"mnasnet_a1_{depth_multiplier:g}")

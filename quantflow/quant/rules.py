"""What TFLite's int8 kernels do with each Keras layer and activation, as data the graph
transform reads: which activations fuse into CONV / FC / ADD / MUL, which have a fixed
output range, which ops keep their input's grid, which merges share one output scale,
which layers are dropped, and so which layers can be fake-quantized at all."""

from __future__ import annotations

from keras import layers

FUSED_ACTIVATIONS = ("linear", "relu", "relu6")  # what TFLite fuses into CONV/FC/ADD/MUL
ACTIVATIONS = FUSED_ACTIVATIONS + ("sigmoid", "hard_sigmoid", "silu", "hard_silu", "tanh")
ACTIVATIONS += ("softmax",)
NON_NEGATIVE_ACTIVATIONS = ("relu", "relu6", "sigmoid", "hard_sigmoid", "softmax")
TIE_MARGIN = 1.01  # widening of a fixed range whose grid would put values on rounding ties


def fixed_output_range(activation: str, bits: int) -> tuple[float, float] | None:
    """The output range TFLite imposes on an activation (8 bits: LOGISTIC and SOFTMAX scale
    1/256 zero point -128, TANH scale 1/128 zero point 0), or None."""
    if activation in ("sigmoid", "softmax"):
        return 0.0, 1.0 - 2.0**-bits
    if activation == "tanh":
        return -1.0, 1.0 - 2.0 ** (1 - bits)
    return None


DROPPED = (
    layers.Dropout,
    layers.SpatialDropout1D,
    layers.SpatialDropout2D,
    layers.GaussianNoise,
    layers.GaussianDropout,
    layers.AlphaDropout,
    layers.ActivityRegularization,
)
# ops TFLite runs on their input's int8 grid (same scale and zero point in and out)
SAME_GRID = (
    layers.Reshape,
    layers.Flatten,
    layers.ZeroPadding2D,
    layers.Cropping2D,
    layers.MaxPooling2D,
    layers.GlobalMaxPooling2D,
    layers.Identity,
)
MERGES = (
    layers.Add,
    layers.Subtract,
    layers.Multiply,
    layers.Average,
    layers.Maximum,
    layers.Minimum,
    layers.Concatenate,
)
# merges whose inputs TFLite puts on the output's grid (the converter overrides their ranges)
SHARED_SCALE_MERGES = (layers.Concatenate, layers.Maximum, layers.Minimum)
FUSING_MERGES = (layers.Add, layers.Subtract, layers.Multiply)  # TFLite fuses ReLU(6) there
POOLS = (layers.GlobalAveragePooling2D, layers.AveragePooling2D)
AFFINE = (layers.Rescaling, layers.Normalization, layers.BatchNormalization)
ACTIVATION_LAYERS = (layers.ReLU, layers.Activation, layers.LeakyReLU, layers.Softmax)
WEIGHTED = (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)
SUPPORTED_LAYERS = tuple(
    cls.__name__
    for cls in WEIGHTED + MERGES + POOLS + AFFINE + ACTIVATION_LAYERS + SAME_GRID + DROPPED
)


def activation_name(layer) -> str | None:
    """The activation a ReLU / Activation layer (or a layer's `activation`) computes, as
    one of ACTIVATIONS, or None when it is none of them."""
    if isinstance(layer, layers.ReLU):
        if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
            return None
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else None
    fn = getattr(layer, "activation", None)
    name = getattr(fn, "__name__", None)
    return name if name in ACTIVATIONS else None

"""Fake quantization of a Keras 3 functional model "in the TFLite manner", with trainable
FAT thresholds (Goncharenko et al., "Fast Adjustable Threshold For Uniform Neural Network
Quantization", arXiv 1812.07872).

`fake_quant_model` rebuilds a float classifier as the graph TFLite's int8 kernels execute,
every rounding explicit (`tf.quantization.fake_quant_*` ops). Converted with
`quantflow.tflite.convert(qmodel, "int8", calibration)` it becomes a fully int8 TFLite model
that uses these ranges, so the Keras model predicts what the device will: the quantized
layers compute TFLite's integer arithmetic exactly (int32 bias on the accumulator's grid,
integer accumulators, XNNPACK's float32 requantization and fixed-point ADD; see
`quantflow.quant.layers`), so the logits match LiteRT's to the output step on the zoo
models, not only the top-1 class. `export_mode` (used by `quantflow.tflite.convert`) traces
the graph the converter expects instead.

* Conv2D, DepthwiseConv2D and Dense become `QConv2D`, `QDepthwiseConv2D`, `QDense`: a
  BatchNormalization right after one (its only consumer, the layer being linear) is folded
  into the kernel and a float bias (TFLite stores it as int32), and a following ReLU /
  ReLU6 (only consumer) is fused, as TFLite fuses them. The kernel is quantized symmetric,
  narrow range, per output channel (or per tensor) to [-T, T] (below 8 bits handed to the
  converter as int8 on a grid that contains the b-bit one, see `int8_grid`). Other
  activations are separate int8 ops in TFLite, so they get a quantizer before and after.
* `ActivationQuant` quantizes one tensor: the model input, the output of every quantized
  layer (after its fused activation), of Add, Subtract, Multiply, Average, Concatenate,
  Maximum, Minimum, average pooling, standalone activations and the logits.
  - Add, Subtract and Multiply followed by their only consumer ReLU / ReLU6 are quantized
    after the activation (fused in TFLite).
  - Sigmoid and softmax outputs have TFLite's fixed range [0, 255/256] (tanh [-1, 127/128]);
    swish is LOGISTIC then MUL, with the sigmoid quantized in between, as TFLite runs it.
  - Max pooling, Reshape, Flatten, ZeroPadding2D and Cropping2D keep their input's grid (no
    quantizer); AveragePooling2D rounds back onto its input's grid (same quantizer).
  - A tensor that only feeds a Concatenate / Maximum / Minimum gets no quantizer of its
    own: TFLite puts it on that op's output grid, so it is rounded once, by that op's.
  - Rescaling, Normalization and a BatchNormalization that cannot be folded become per-
    channel MUL / ADD steps (`QAffine`, constants quantized as TFLite stores them), each
    with its own quantizer.
  Dropout and noise layers are dropped; a functional model nested in another (transfer
  learning wrapper) is flattened first. Any other layer raises a QuantflowError naming it.
* The model INPUT is quantized to a fixed range, (0, 255) by default: 8-bit scale 1 and
  zero point -128, so integer pixels are exact in the TFLite model's int8 input. The
  preprocessing steps after it get fixed ranges too, the image of the input range:
  Rescaling(1/255) stays exact; an offset that is not a whole number of input steps (as
  Rescaling(1/127.5, -1)) cannot be exact with zero on the grid, and its range is widened
  by TIE_MARGIN so no value sits on a rounding tie. `input_range=None` calibrates the
  input quantizer like any other (signed).

Thresholds (FAT): symmetric, T = clip(alpha, 0.5, 1) * T_max, range [-T, T * 127/128] for
signed (8 bits: scale T/128, int8 zero point exactly 0; [-T, T] would put the zero point on
a tie that TensorFlow and the converter round differently) and [0, T] for non-negative tensors (after ReLU, ReLU6, sigmoid, softmax, and ops of those).
Asymmetric activations (`symmetric=False`): the calibrated range [m, M] with R = M - m
becomes lo = m + clip(alpha_T) * R (alpha_T in [-0.2, 0.4], [0, 0.4] if non-negative) and
hi = lo + clip(alpha_R, 0.5, 1) * R, then widened to contain 0 (TFLite must represent zero
exactly, so for a non-negative tensor lo stays 0). Weights are always symmetric (TFLite int8
weights have zero point 0). The alphas start at their neutral values and are the only
trainable variables of the model; T_max (m, M) comes from `calibrate` (activations, float
statistics) and max|W| (weights). Fixed ranges have no alphas.

The quantizers get the FAT gradient (straight-through for the rounding): for a value
inside the range d y / d hi = (y - x) / (hi - lo) = -d y / d lo, outside it the gradient
goes to the nearer edge, so training shrinks a range that is too wide, not only widens one
(TensorFlow's own fake-quant gradient only ever widens).

This module is the façade of the quantization core, `quantflow.quant` (what lives where:
see that package's doc); it re-exports the API the rest of the repository uses. The
per-layer config (`overrides={"logits": {"weight_bits": 8}}` or a whole
`quantflow.quant.config.QuantConfig`) is accepted by `fake_quant_model`.
"""

from __future__ import annotations

from quantflow.quant.calibrate import (  # noqa: F401
    CALIBRATION_METHODS,
    activation_quantizers,
    alpha_bounds,
    alpha_variables,
    calibrate,
    clip_alphas,
    float_mode,
    image_batches,
    thresholds,
    weight_quantizers,
)
from quantflow.quant.config import LayerQuant, QuantConfig  # noqa: F401
from quantflow.quant.folding import (  # noqa: F401
    affine_range as _affine_range,
    affine_steps as _affine_steps,
    channel_vector as _channel_vector,
    float_kernel as _float_kernel,
    fold_batch_norm as _fold_batch_norm,
    foldable_bn as _foldable_bn,
)
from quantflow.quant.graph import Graph as _Graph  # noqa: F401
from quantflow.quant.graph import Node as _Node  # noqa: F401
from quantflow.quant.graph import Ref as _Ref  # noqa: F401
from quantflow.quant.graph import flatten_graph  # noqa: F401
from quantflow.quant.layers import (  # noqa: F401
    ActivationQuant,
    QAdd,
    QAffine,
    QConv2D,
    QDense,
    QDepthwiseConv2D,
    QuantizedOp,
)
from quantflow.quant.layers import QuantizedOp as _QuantizedOp  # noqa: F401
from quantflow.quant.ops import (  # noqa: F401
    MIN_THRESHOLD,
    export_mode,
    f32_step as _f32_step,
    fake_quant,
    fat_gradient as _fat_gradient,
    folded_int8,
    grid_quant,
    int8_grid,
    requantized as _requantized,
    ste_round as _ste_round,
)
from quantflow.quant.quantizers import ALPHA_BOUNDS, SHIFT_BOUNDS  # noqa: F401
from quantflow.quant.rules import (  # noqa: F401
    ACTIVATIONS,
    FUSED_ACTIVATIONS,
    NON_NEGATIVE_ACTIVATIONS,
    SUPPORTED_LAYERS,
    TIE_MARGIN,
    fixed_output_range,
)
from quantflow.quant.rules import activation_name as _activation_name  # noqa: F401
from quantflow.quant.transform import _Transform, fake_quant_model  # noqa: F401

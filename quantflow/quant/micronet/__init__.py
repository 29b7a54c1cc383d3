"""MicroNet-style efficiency score of a (mixed-precision) quantized classifier.

    score = parameter storage / P_ref + operations / F_ref

Both terms are in "32-bit equivalents": a k-bit parameter counts k/32 of a parameter, a
k-bit operation k/32 of an operation. `count_model` walks a Keras 3 functional model once
(nested models flattened as `quantflow.quant.graph.flatten_graph` does) and returns one
`LayerCount` per counted operation; `score` then weighs those counts by the bit widths of a
configuration, without TensorFlow. P_ref and F_ref default to the float model's own 32-bit
totals (the plain parameter and operation counts), so the float model scores exactly 2.0
and a model with 8-bit weights, activations and biases exactly 0.5;
`MICRONET_IMAGENET` gives the challenge's ImageNet references (6.9M parameters, 1170M
operations) instead.

Counting convention
-------------------
The graph counted is the one the fake-quant transform builds (and TFLite runs):

* BatchNormalization right after a Conv2D / DepthwiseConv2D / Dense (its only consumer,
  the layer linear, over the last axis) is folded: no parameters and no operations of its
  own, and the folded layer has a bias (one per output channel) even if use_bias=False.
* ReLU / ReLU6 fused into the layer before it (a Conv2D / DepthwiseConv2D / Dense, or an
  Add / Subtract / Multiply; the activation its only consumer, or the layer's own
  `activation`) cost nothing: they are the clamp of the requantized output.
* Reshape, Flatten, ZeroPadding2D, Cropping2D, Identity, Dropout and noise layers and
  Concatenate cost nothing.

Parameter storage (every value needed for inference; a k-bit value counts k/32):
* Conv2D, DepthwiseConv2D, Dense: every kernel value at the weight bits of its output
  channel (per-channel bits allowed); the bias (after folding) at the bias bits, 32 by
  default: TFLite stores int32 biases. No 16-bit "freebie": a float model counts 32 bits.
* Rescaling, Normalization and a BatchNormalization that cannot be folded become one
  multiplication and/or one addition step by per-channel (or scalar) constants, as in the
  fake-quant model (identity steps dropped): each step's constants are the weights of a
  record of kind "scale" / "shift", at its weight bits (TFLite stores them as int8
  tensors, not as int32 biases).

Operations (each at b/32 of an operation, b its bit width):
* Conv2D, DepthwiseConv2D, Dense: every multiply-accumulate is two operations, a
  multiplication and the addition into the accumulator, both at max(w_o, a_i), w_o the
  bits of the weight's output channel and a_i of the input channel it multiplies. MACs:
  conv kh*kw * (in_channels / groups) * Ho*Wo per output channel, depthwise kh*kw * Ho*Wo
  per output channel, dense in_features per output unit (times the positions of a rank > 2
  input). The bias is the accumulator's initial value, no extra addition (so an output
  with a bias is n multiplications + (n - 1) accumulations + 1 bias addition, the challenge
  counting script's count). Kernel taps on padding are counted (full windows).
* scale / shift steps: one multiplication / addition per element at max(w_c, a_c).
* Add / Subtract: (k - 1) additions per output element for k inputs; Multiply: (k - 1)
  multiplications; Average: (k - 1) additions + 1 multiplication; Maximum / Minimum:
  (k - 1) comparisons, counted as additions. Bits: the largest of the inputs' bits at
  that channel (a one-channel input broadcasts).
* GlobalAveragePooling2D: (H*W - 1) additions + 1 multiplication per channel;
  AveragePooling2D: (ph*pw - 1) additions + 1 multiplication per output element;
  MaxPooling2D: (ph*pw - 1) comparisons per output element, GlobalMaxPooling2D (H*W - 1)
  per channel, counted as additions. Bits: the input's, per channel.
* An activation that is not fused runs as its own op, per element at its input's bits:
  relu / relu6 1 comparison (an addition), leaky relu 1 multiplication + 1 comparison,
  sigmoid and tanh 2 multiplications + 1 addition, hard_sigmoid 1 + 1, silu (swish) 3 + 1,
  hard_silu 2 + 1, softmax 2 + 1 (exp, sum, division). A Conv2D / Dense with such an
  `activation` writes tensor "<layer>_linear", read by the activation record
  "<layer>_<activation>" (the fake-quant model's names).

Bits are keyed by name: weight bits (and bias bits) by record name (the layer's path,
"backbone/conv" inside a nested model), activation bits by the name of the tensor an
operation reads: the model input by its InputLayer's name, any other tensor by the layer
that writes it (a Conv2D with folded BatchNormalization and fused ReLU6 writes one tensor,
named after the Conv2D; an Add with fused ReLU one named after the ReLU; MaxPooling2D,
AveragePooling2D and the free layers above pass their input's name on). Each may be one
number or an array per channel. Through a Flatten / Reshape, view channel l reads channel
l % C of the C-channel tensor (channels last).

Reported means: mean weight bits over all weight values (biases excluded); mean
activation bits over all values of the tensors the counted operations read (each tensor
once); mean operation bits = 32 * operations / operation count.
"""

"""tiny_mobilenet: the default run's small MobileNet-style CNN (Fashion-MNIST, 28x28). Like every
builder it returns a float Keras 3 functional model that takes float32 pixels in [0, 255]
(its preprocessing is inside, as Keras layers) and outputs logits (no softmax)."""

from __future__ import annotations


def _channels(n: int, width: float) -> int:
    """Scale a channel count by `width`, rounded to a multiple of 8 (at least 8)."""
    return max(8, int(round(n * width / 8)) * 8)


def tiny_mobilenet(
    input_shape,
    num_classes: int,
    width: float = 1.0,
    dropout: float = 0.2,
    bn_momentum: float = 0.9,
    head: int = 1024,
):
    """A small MobileNet-style CNN for 28x28 to 64x64 inputs on a CPU. Takes pixels in
    [0, 255] and rescales them itself, like every model of the project.

    A 3x3 stride-2 stem, depthwise-separable blocks (depthwise 3x3 + BN + ReLU6, pointwise
    1x1 + BN + ReLU6), global average pooling, then a MobileNetV3-style head: a dense
    layer of `head` units (ReLU6, 0 to leave it out), dropout and the logits. BatchNorm
    momentum 0.9 (not Keras' 0.99) so the moving statistics settle within a short run.
    """
    import keras
    from keras import layers

    def conv_bn_relu(x, filters, kernel, strides, name):
        x = layers.Conv2D(
            filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
        )(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu")(x)

    def separable(x, filters, strides, name):
        x = layers.DepthwiseConv2D(
            3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw"
        )(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_dw_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
        return conv_bn_relu(x, filters, 1, 1, f"{name}_pw")

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)  # pixels [0, 255] -> [0, 1]
    x = conv_bn_relu(x, _channels(32, width), 3, 2, "stem")
    for i, (filters, strides) in enumerate(TINY_MOBILENET_BLOCKS):
        x = separable(x, _channels(filters, width), strides, f"block{i + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if head:
        x = layers.Dense(_channels(head, width), name="head")(x)
        x = layers.ReLU(6.0, name="head_relu")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="tiny_mobilenet")


# (pointwise filters at width 1.0, stride of the depthwise convolution), after the
# stride-2 stem: 28x28 inputs run at 14x14 then 7x7.
TINY_MOBILENET_BLOCKS = ((64, 1), (128, 2), (256, 1), (256, 1))

"""Image classifiers from the Keras application zoo (and MNasNet-A1) in quantflow's convention.

Every model takes float32 RGB pixels in [0, 255] (NHWC; a grayscale dataset gives 1 channel)
and outputs logits. The preprocessing an architecture expects is built into the model with
standard layers, so one data pipeline serves all models and an int8 TFLite input (scale 1,
zero point -128) represents the pixels exactly:

    mobilenet_v2     Rescaling(1/127.5, offset=-1): [-1, 1], as Keras' MobileNetV2 expects.
    resnet50/101     Normalization subtracting the ImageNet RGB means (Keras' "caffe" mode
                     without the RGB->BGR swap). With pretrained weights the swap is folded
                     into the first convolution instead: its kernel's input-channel axis is
                     reversed (`reverse_input_channels`), identical maths at zero cost.
    efficientnet_b0  nothing added: Keras' EfficientNetB0 has its own Rescaling(1/255) and
                     Normalization. With pretrained weights Keras adds a Rescaling by
                     1/sqrt(ImageNet std); here it is folded into the stem convolution's
                     kernel (`scale_input_channels`), again exact and free.
    mnasnet_a1       Rescaling(1/127.5, offset=-1): [-1, 1], as MobileNet.
    tiny_mobilenet   delegated to `quantflow.models.tiny_mobilenet` (its own convention).

Grayscale inputs (1 channel) are tiled to 3 channels with a Concatenate layer in front of
every ImageNet architecture, whatever the weights, so weight files fit the same network.

The backbone is FLATTENED: the application is built on the wrapper's preprocessed tensor
(`input_tensor=`), so its layers sit directly in the returned model next to the
preprocessing and head layers. Layer names are the application's (e.g. "conv1_conv"),
which keeps name-based transforms (weight restoring, trainable scopes, channel folding)
one-level simple. The head is Dropout ("head_dropout", left out at dropout 0) and
Dense(num_classes) named "logits", after the backbone's global average pooling.

`weights`:
    "none"      random initialisation.
    "imagenet"  Keras' ImageNet file for the backbone (include_top=False), downloaded once
                to ~/.keras/models; offline, a QuantflowError names the file to fetch.
    a path      a backbone weights file ending in .h5: exactly what the Keras application
                loads (e.g. its ImageNet "_notop.h5" file fetched by hand, or
                `backbone.save_weights("x.weights.h5")` of the same application built with
                include_top=False). It is treated as pretrained weights in the
                application's own input convention, so the same first-convolution fixes
                apply as for "imagenet". A full .keras model is not a weights file: build
                with "none" and use `quantflow.models.finetune.restore_weights` (by layer name).
    a .pb path  mnasnet_a1 only: a TF1 frozen MNasNet graph, the FAT reference's starting
                point; its convolution, depthwise and BatchNorm constants are read in graph
                order and checked by shape against MNasNet-A1 at `depth_multiplier`
                (`quantflow.models.frozen_mnasnet`; its classifier is left out, the head is
                new). The graph's input convention is taken to be the zoo's ([-1, 1]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantflow.errors import QuantflowError

ZOO_ARCHITECTURES = (
    "mobilenet_v2",
    "resnet50",
    "resnet101",
    "efficientnet_b0",
    "mnasnet_a1",
    "tiny_mobilenet",
)


IMAGENET_ARCHITECTURES = ZOO_ARCHITECTURES[:5]


# BatchNorm's moving statistics follow the batches with at most this momentum. Keras'
# MobileNetV2 uses 0.999: trained from scratch for a few thousand steps its moving
# statistics still hold most of their initial values, and the inference model is at chance
# (Fashion-MNIST, 3 epochs: 87% training, 9.8% validation accuracy) while training is fine.
BN_MOMENTUM = 0.99


MIN_INPUT_SIZE = 32  # the Keras applications' minimum with include_top=False


IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)  # Keras "caffe" means, in RGB order


EFFICIENTNET_STDDEV_RGB = (0.229, 0.224, 0.225)


MOBILENET_V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)


FIRST_CONV = {"resnet50": "conv1_conv", "resnet101": "conv1_conv", "efficientnet_b0": "stem_conv"}


HEAD_LAYERS = ("head_dropout", "logits")


_KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications/"


_IMAGENET_FILES = {  # arch -> (file name, URL, md5 as Keras checks it)
    "resnet50": (
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_WEIGHTS + "resnet/",
        "4d473c1dd8becc155b73f8504c6f6626",
    ),
    "resnet101": (
        "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_WEIGHTS + "resnet/",
        "88cf7a10940856eca736dc7b7e228a21",
    ),
    "efficientnet_b0": (
        "efficientnetb0_notop.h5",
        "https://storage.googleapis.com/keras-applications/",
        "50bc09e76180e00e4465e1a485ddc09d",
    ),
}


def default_input_size(arch: str) -> int:
    """The input side an architecture is usually trained at: 224 for the ImageNet models,
    28 for tiny_mobilenet (Fashion-MNIST)."""
    _check_arch(arch)
    return 28 if arch == "tiny_mobilenet" else 224


def build_zoo_model(
    arch: str,
    input_shape,
    num_classes: int,
    *,
    weights: str = "none",
    alpha: float = 1.0,
    dropout: float = 0.2,
    depth_multiplier: float = 1.0,
):
    """A classifier of architecture `arch` for float [0, 255] images of `input_shape`
    (H, W, C) that outputs `num_classes` logits; see the module docstring for the
    preprocessing, the head and the `weights` rules. `alpha` is MobileNetV2's width (and
    tiny_mobilenet's), `depth_multiplier` MNasNet's."""
    import keras
    from keras import layers

    _check_arch(arch)
    _check_options(arch, alpha, depth_multiplier)
    weights = "none" if weights is None else str(weights)
    if arch == "tiny_mobilenet":
        if weights != "none":
            raise QuantflowError(
                f"tiny_mobilenet has no pretrained weights (weights={weights!r}); use "
                "weights: none, then quantflow.models.finetune.restore_weights for a saved model"
            )
        from quantflow.models.tiny_mobilenet import tiny_mobilenet

        if alpha != 1.0:
            print("quantflow: tiny_mobilenet's width is `width`; `alpha` is deprecated")
        return tiny_mobilenet(input_shape, num_classes, width=alpha, dropout=dropout)

    shape = _check_input_shape(arch, input_shape)
    weights_file = _weights_file(arch, weights, alpha, shape)
    inputs = keras.Input(shape=shape, name="image")
    x = inputs
    if shape[-1] == 1:
        x = layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    x = _preprocess(arch, x)
    backbone = _backbone(arch, x, alpha, depth_multiplier)
    if weights_file is not None and weights_file.suffix == ".pb":  # the FAT reference's route
        from quantflow.models.frozen_mnasnet import graph_weights, set_graph_weights

        found = [w for w in graph_weights(weights_file) if w.kind != "dense"]
        set_graph_weights(backbone, found, str(weights_file), depth_multiplier)
    elif weights_file is not None:
        _load_backbone_weights(backbone, arch, weights_file)
        if arch in ("resnet50", "resnet101"):
            reverse_input_channels(backbone, FIRST_CONV[arch])
        elif arch == "efficientnet_b0":
            factors = [1.0 / np.sqrt(s) for s in EFFICIENTNET_STDDEV_RGB]
            scale_input_channels(backbone, FIRST_CONV[arch], factors)
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization) and layer.momentum > BN_MOMENTUM:
            layer.momentum = BN_MOMENTUM
    x = backbone.output
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=arch)


def reverse_input_channels(model, layer_name: str) -> None:
    """Reverse the input-channel axis of a convolution's kernel in place: the layer then
    gives on RGB what it gave on BGR (how Keras' BGR "caffe" ResNets take RGB input)."""
    layer = _conv_layer(model, layer_name)
    kernel, *rest = layer.get_weights()
    layer.set_weights([kernel[:, :, ::-1, :].copy(), *rest])


def scale_input_channels(model, layer_name: str, factors) -> None:
    """Multiply a convolution's kernel per input channel in place: the same as scaling its
    input channels by `factors` first (exact when its input is zero-padded, not offset)."""
    layer = _conv_layer(model, layer_name)
    kernel, *rest = layer.get_weights()
    factors = np.asarray(factors, dtype=kernel.dtype).reshape(1, 1, -1, 1)
    layer.set_weights([kernel * factors, *rest])


def _check_arch(arch: str) -> None:
    if arch not in ZOO_ARCHITECTURES:
        raise QuantflowError(
            f"unknown zoo architecture {arch!r}; choose one of: {', '.join(ZOO_ARCHITECTURES)}"
        )


def _check_options(arch: str, alpha: float, depth_multiplier: float) -> None:
    if alpha != 1.0 and arch not in ("mobilenet_v2", "tiny_mobilenet"):
        raise QuantflowError(
            f"alpha={alpha} applies to mobilenet_v2 and tiny_mobilenet, not {arch}"
        )
    if depth_multiplier != 1.0 and arch != "mnasnet_a1":
        raise QuantflowError(
            f"depth_multiplier={depth_multiplier} applies to mnasnet_a1, not {arch}"
        )
    if alpha <= 0 or depth_multiplier <= 0:
        raise QuantflowError(f"{arch}: alpha and depth_multiplier must be positive")


def _check_input_shape(arch: str, input_shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise QuantflowError(
            f"{arch}: input shape {shape} must be (height, width, channels) with 1 or 3 channels"
        )
    if min(shape[:2]) < MIN_INPUT_SIZE:
        raise QuantflowError(
            f"{arch}: input {shape[0]}x{shape[1]} is below the {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} "
            "minimum; resize the images (default size: 224)"
        )
    return shape


def _preprocess(arch: str, x):
    """The architecture's input scaling as standard layers (pixels in [0, 255] in)."""
    from keras import layers

    if arch in ("mobilenet_v2", "mnasnet_a1"):
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)
    if arch in ("resnet50", "resnet101"):
        return layers.Normalization(
            mean=list(IMAGENET_MEAN_RGB), variance=[1.0, 1.0, 1.0], name="preprocess"
        )(x)
    return x  # efficientnet_b0 scales and normalises inside the application


def _backbone(arch: str, x, alpha: float, depth_multiplier: float):
    """The application without its top, average-pooled, built on tensor `x` (flattened)."""
    import keras

    common = {"include_top": False, "weights": None, "input_tensor": x, "pooling": "avg"}
    if arch == "mobilenet_v2":
        return keras.applications.MobileNetV2(alpha=alpha, **common)
    if arch == "resnet50":
        return keras.applications.ResNet50(**common)
    if arch == "resnet101":
        return keras.applications.ResNet101(**common)
    if arch == "efficientnet_b0":
        return keras.applications.EfficientNetB0(**common)
    from quantflow.models.mnasnet import mnasnet_a1

    return mnasnet_a1(depth_multiplier=depth_multiplier, input_tensor=x)


def _weights_file(arch: str, weights: str, alpha: float, shape) -> Path | None:
    """The backbone weights file to load: None for "none", Keras' ImageNet file (fetched
    into its cache) for "imagenet", else the given path after checks."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return _fetch_imagenet(arch, alpha, shape)
    path = Path(weights)
    if path.suffix == ".keras":
        raise QuantflowError(
            f"weights {path} is a full Keras model, not backbone weights; build with "
            "weights: none and restore it by layer name with "
            "quantflow.models.finetune.restore_weights(model, path, exclude=['logits'])"
        )
    if path.suffix == ".pb" and arch != "mnasnet_a1":
        raise QuantflowError(
            f"weights {path}: a frozen graph's weights are read for mnasnet_a1 only; for "
            f"another network give the graph itself as the model (arch: frozen_graph)"
        )
    if path.suffix not in (".h5", ".pb"):
        raise QuantflowError(
            f"weights {weights!r} for {arch}: use 'none', 'imagenet' or the path of a backbone "
            "weights file ending in .h5 (Keras' include_top=False file, or .weights.h5)"
            + (" or a frozen MNasNet graph (.pb)" if arch == "mnasnet_a1" else "")
        )
    if not path.is_file():
        raise QuantflowError(f"weights file {path} for {arch} not found")
    return path


def imagenet_weights_file(
    arch: str, alpha: float = 1.0, size: int = 224
) -> tuple[str, str, str | None]:
    """(file name, URL, md5 or None) of Keras' include_top=False ImageNet weights."""
    if arch == "mobilenet_v2":
        if alpha not in MOBILENET_V2_ALPHAS:
            raise QuantflowError(
                f"mobilenet_v2 ImageNet weights exist for alpha in {MOBILENET_V2_ALPHAS}, "
                f"not {alpha}; pick one of those or use weights: none"
            )
        rows = size if size in MOBILENET_V2_SIZES else 224
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"
        return name, _KERAS_WEIGHTS + "mobilenet_v2/" + name, None
    if arch not in _IMAGENET_FILES:
        raise QuantflowError(
            f"Keras publishes no ImageNet weights for {arch}; use weights: none or the path "
            "of a backbone .h5 weights file"
        )
    name, base, md5 = _IMAGENET_FILES[arch]
    return name, base + name, md5


def _fetch_imagenet(arch: str, alpha: float, shape) -> Path:
    """Keras' ImageNet file for `arch`, from its cache or downloaded into it."""
    import keras

    size = shape[0] if shape[0] == shape[1] else 224
    name, url, md5 = imagenet_weights_file(arch, alpha, size)
    try:
        return Path(keras.utils.get_file(name, url, cache_subdir="models", file_hash=md5))
    except Exception as e:  # get_file raises a bare Exception for network errors
        raise QuantflowError(
            f"{arch}: could not download the ImageNet weights {name} from {url} ({e}). "
            f"Without internet access, fetch that file elsewhere and either copy it to "
            f"~/.keras/models/{name} (Keras' cache) or pass its path as the weights "
            "(weights: /path/to/" + name + "); or use weights: none"
        ) from e


def _load_backbone_weights(backbone, arch: str, path: Path) -> None:
    try:
        backbone.load_weights(str(path))
    except Exception as e:  # ValueError (layer count/shape), OSError (not HDF5), KeyError
        raise QuantflowError(
            f"weights file {path} does not fit the {arch} backbone ({type(e).__name__}: {e}); "
            f"it must be the include_top=False weights of the same Keras application"
            + (" with the same alpha" if arch == "mobilenet_v2" else "")
        ) from e


def _conv_layer(model, layer_name: str):
    from keras import layers

    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        raise QuantflowError(f"model {model.name!r} has no layer {layer_name!r}") from None
    if not isinstance(layer, layers.Conv2D):
        raise QuantflowError(f"layer {layer_name!r} of {model.name!r} is not a Conv2D")
    return layer

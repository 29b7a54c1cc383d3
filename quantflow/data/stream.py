"""Streaming input pipeline for (image path, label) lists: decode, resize, crop, batch.

Images are decoded one at a time by OpenCV inside a tf.data pipeline, never all at once.
Models get float32 RGB (or grayscale) pixels in [0, 255], NHWC, and int32 labels, as
everywhere in quantflow; preprocessing lives inside the models.

How decoding errors surface: tf.data runs `decode_image` through tf.numpy_function, so a
QuantflowError raised there (naming the image file) reaches the caller as a
tf.errors.UnknownError whose message starts with "QuantflowError: <message>". Wrap the
loop that consumes the dataset (model.fit, evaluate, a for loop) in
`with pipeline_errors():` to get the QuantflowError itself back, or call
`quantflow_error_from(exc)` on a caught exception.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from quantflow.errors import QuantflowError

if TYPE_CHECKING:
    import tensorflow as tf

Entry = tuple[str | os.PathLike[str], int]
_ERROR_IN_MESSAGE = re.compile(r"QuantflowError: (.*?)(?:\nTraceback|\n\n|\n\t|$)", re.DOTALL)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    """(height, width) as positive ints."""
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise QuantflowError(f"image size must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise QuantflowError(f"image size must be positive, got {size!r}")
    return height, width


def _check_channels(channels: int) -> int:
    """1 (grayscale) or 3 (RGB)."""
    if channels not in (1, 3):
        raise QuantflowError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return channels


def resize_and_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale `image` so it just covers `size` (height, width), then crop the centre.

    For a square target this resizes the shorter side to the target. Shrinking uses
    cv2.INTER_AREA, growing cv2.INTER_LINEAR; an image already at `size` is untouched.
    """
    height, width = size
    h0, w0 = image.shape[:2]
    scale = max(height / h0, width / w0)
    new_h, new_w = max(height, round(h0 * scale)), max(width, round(w0 * scale))
    if (new_h, new_w) != (h0, w0):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return image[top : top + height, left : left + width]


def decode_image(
    path: str | os.PathLike[str], size: tuple[int, int], channels: int = 3
) -> np.ndarray:
    """The image at `path` as uint8 height x width x channels (RGB or grayscale).

    `size` is (height, width): the image is resized so its shorter side (relative to the
    target) matches, then centre-cropped. Raises QuantflowError naming the path when the
    file is missing or is not an image OpenCV can decode.
    """
    height, width = _check_size(size)
    _check_channels(channels)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # imdecode: no trouble with odd file names
    except FileNotFoundError:
        raise QuantflowError(f"image {path} does not exist") from None
    except OSError as e:
        raise QuantflowError(f"cannot read image {path}: {e.strerror or e}") from None
    flag = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
    image = cv2.imdecode(data, flag) if data.size else None
    if image is None:
        raise QuantflowError(
            f"cannot decode image {path}: it is empty, truncated or not in an image format "
            "OpenCV reads (JPEG, PNG, BMP, WebP, ...); replace it or remove it from the list"
        )
    if channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    image = resize_and_crop(image, (height, width))
    if image.ndim == 2:
        image = image[..., np.newaxis]
    return np.ascontiguousarray(image)


def load_images(
    entries: Sequence[Entry], size: tuple[int, int], channels: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Decode all `entries` into memory: (uint8 N x H x W x C, int32 N). For small subsets."""
    height, width = _check_size(size)
    _check_channels(channels)
    images = np.empty((len(entries), height, width, channels), dtype=np.uint8)
    labels = np.empty(len(entries), dtype=np.int32)
    for i, (path, label) in enumerate(entries):
        images[i] = decode_image(path, (height, width), channels)
        labels[i] = label
    return images, labels


def _decode_for_tf(path: bytes, size: tuple[int, int], channels: int) -> np.ndarray:
    """decode_image for tf.numpy_function: every failure becomes a QuantflowError naming the file."""
    name = os.fsdecode(path)
    try:
        return decode_image(name, size, channels)
    except QuantflowError:
        raise
    except Exception as e:  # cv2.error, MemoryError, ...: still say which file
        raise QuantflowError(f"cannot decode image {name}: {type(e).__name__}: {e}") from None


def make_dataset(
    entries: Sequence[Entry],
    size: tuple[int, int],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    augment: bool = False,
    channels: int = 3,
    num_parallel_calls: int | None = None,
    crop_padding: float = 0.0,
) -> tf.data.Dataset:
    """Batches of (float32 images in [0, 255], N x H x W x C; int32 labels) from `entries`.

    Only paths and labels are held in memory; images are decoded in parallel
    (`num_parallel_calls`, default AUTOTUNE), in order, then batched (the last batch may
    be smaller) and prefetched. `shuffle` reshuffles the entries every epoch from `seed`.
    `augment` flips images left-right at random (seeded); with `crop_padding` > 0 (e.g.
    0.125) it also decodes them that much larger and takes a random crop of `size`.
    See the module docstring for how decoding errors surface.
    """
    import tensorflow as tf

    height, width = _check_size(size)
    _check_channels(channels)
    if not entries:
        raise QuantflowError("no images to load: the (path, label) list is empty")
    if int(batch_size) < 1:
        raise QuantflowError(f"batch_size must be at least 1, got {batch_size!r}")
    if crop_padding < 0:
        raise QuantflowError(f"crop_padding must be >= 0, got {crop_padding!r}")
    paths = [os.fspath(Path(path)) for path, _ in entries]
    labels = np.asarray([label for _, label in entries], dtype=np.int64)
    if labels.min() < 0 or labels.max() > np.iinfo(np.int32).max:
        raise QuantflowError(f"labels must be non-negative int32 values, got {labels.min()}")
    parallel = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls

    decode_size = (height, width)
    if augment and crop_padding > 0:
        decode_size = (
            math.ceil(height * (1 + crop_padding)),
            math.ceil(width * (1 + crop_padding)),
        )
    decode = functools.partial(_decode_for_tf, size=decode_size, channels=channels)

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.numpy_function(decode, [path], tf.uint8, stateful=False, name="decode_image")
        image = tf.ensure_shape(image, (*decode_size, channels))
        return image, label

    def randomize(image: tf.Tensor, label: tf.Tensor, rand: tf.Tensor):
        if decode_size != (height, width):
            crop_seed = tf.stack([rand, tf.constant(1, tf.int64)])
            image = tf.image.stateless_random_crop(image, (height, width, channels), crop_seed)
        flip_seed = tf.stack([rand, tf.constant(2, tf.int64)])
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return image, label

    def to_float(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.cast(image, tf.float32), label

    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, dtype=tf.string), tf.constant(labels, dtype=tf.int32))
    )
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=parallel, deterministic=True)
    if augment:
        rands = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, rands)).map(
            lambda sample, rand: randomize(*sample, rand), num_parallel_calls=parallel
        )
    ds = ds.map(to_float, num_parallel_calls=parallel)
    return ds.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)


def quantflow_error_from(error: BaseException) -> QuantflowError | None:
    """The QuantflowError carried inside a TensorFlow error from the pipeline, if any."""
    if isinstance(error, QuantflowError):
        return error
    text = getattr(error, "message", None) or str(error)
    match = _ERROR_IN_MESSAGE.search(text)
    return QuantflowError(match.group(1).strip()) if match else None


@contextlib.contextmanager
def pipeline_errors() -> Iterator[None]:
    """Re-raise a decoding failure inside tf.data as the QuantflowError that caused it."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError as e:
        error = quantflow_error_from(e)
        if error is None:
            raise
        raise error from None

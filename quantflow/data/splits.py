"""Prepared splits as training, conversion and evaluation read them: `Split` (batches of
float32 pixels in [0, 255]), `read_info`, `preprocess`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from quantflow.errors import QuantflowError

SPLITS = ("train", "val", "test")


def read_info(path: str | Path) -> dict:
    """A prepared dataset's info.json: classes, input shape, split sizes, class counts."""
    return json.loads(Path(path).read_text())


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 pixels in [0, 255], the input every model of the project
    takes (each model scales them itself). An int8 model input then has scale 1 and zero
    point -128: the int8 input loses nothing."""
    return images.astype(np.float32)


class Split:
    """One prepared split, in memory (`images`) or as image files (`paths`), read the same
    way by training, conversion and evaluation: batches of float32 pixels in [0, 255].

    A split file is an `.npz` with `labels` and either `images` (uint8 N x H x W x C) or
    `paths` (absolute image paths, decoded and resized to `image_size` on the fly)."""

    def __init__(self, path: str | Path, image_size: tuple[int, int] | None = None):
        self.path = Path(path)
        try:
            with np.load(self.path, allow_pickle=False) as f:
                self.labels = f["labels"].astype(np.int32)
                self.images = f["images"] if "images" in f else None
                self.paths = f["paths"] if "paths" in f else None
        except (OSError, KeyError, ValueError) as e:
            raise QuantflowError(
                f"{path}: not a prepared split ({e}); delete it and rerun the prepare rule"
            ) from e
        if (self.images is None) == (self.paths is None):
            raise QuantflowError(f"{path}: a split holds either images or paths")
        if self.images is not None and image_size is None:
            image_size = self.images.shape[1:3]
        if image_size is None:
            raise QuantflowError(f"{path}: an image-file split needs an image size")
        self.image_size = tuple(int(v) for v in image_size)
        self.channels = self.images.shape[3] if self.images is not None else 3

    def __len__(self) -> int:
        return len(self.labels)

    def _entries(self, indices=None):
        idx = range(len(self)) if indices is None else indices
        return [(str(self.paths[i]), int(self.labels[i])) for i in idx]

    def _resized(self, images: np.ndarray) -> np.ndarray:
        if images.shape[1:3] == self.image_size:
            return images
        from quantflow.data.stream import resize_and_crop

        out = [resize_and_crop(im, self.image_size) for im in images]
        return np.stack([o if o.ndim == 3 else o[..., None] for o in out])

    def take(self, indices) -> np.ndarray:
        """The images at `indices` as float32 pixels (small subsets: calibration, latency)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.images is not None:
            return preprocess(self._resized(self.images[indices]))
        from quantflow.data.stream import load_images

        return preprocess(load_images(self._entries(indices), self.image_size)[0])

    def sample(self, count: int, seed: int) -> np.ndarray:
        """`count` images drawn with `seed` (all when fewer), in split order, as `take`
        gives them: the held-out samples of checks and diagnoses."""
        return self.take(np.sort(np.random.default_rng(seed).permutation(len(self))[:count]))

    def batches(
        self, batch_size: int, *, shuffle: bool = False, seed: int = 0, augment: bool = False
    ):
        """A tf.data.Dataset of (float32 images, int32 labels) batches."""
        import tensorflow as tf

        if self.paths is not None:
            from quantflow.data.stream import make_dataset

            return make_dataset(
                self._entries(),
                self.image_size,
                batch_size,
                shuffle=shuffle,
                seed=seed,
                augment=augment,
            )
        ds = tf.data.Dataset.from_tensor_slices((self._resized(self.images), self.labels))
        if shuffle:
            ds = ds.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
        if augment:
            ds = ds.map(lambda x, y: (tf.image.random_flip_left_right(x, seed=seed), y))
        return ds.prefetch(tf.data.AUTOTUNE)

    def numpy_batches(self, batch_size: int):
        """(float32 images, labels) numpy batches in order, for evaluation."""
        if self.images is not None:
            for i in range(0, len(self), batch_size):
                yield preprocess(self._resized(self.images[i : i + batch_size])), self.labels[
                    i : i + batch_size
                ]
            return
        for x, y in self.batches(batch_size).as_numpy_iterator():
            yield x, y

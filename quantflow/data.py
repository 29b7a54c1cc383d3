"""Datasets: the files each one needs, and its train / validation / test splits.

A prepared split is an `.npz` with `images` (uint8, N x H x W x C) and `labels` (int32);
`info.json` beside the splits names the classes. Models see pixels through `preprocess`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from quantflow.datasets import (
    CIFAR10_ARCHIVE,
    CIFAR10_CHECKSUM,
    CIFAR10_CLASSES,
    CIFAR10_URL,
    OXFORD_PETS_IMAGES_URL,
    load_cifar10,
    load_oxford_pets,
    parse_image_list,
)
from quantflow.errors import QuantflowError
from quantflow.idx import read_idx

# SHA-256 of the decompressed idx payloads. Debian's dataset-fashion-mnist recompresses
# the .gz files, so the digests of the archives differ; the payloads do not.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": "sha256:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "sha256:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "sha256:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "sha256:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_HINT = (
    "To get Fashion-MNIST offline, install the Debian package: "
    "`sudo apt-get install dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist); "
    "or allow network access to one of the HTTPS mirrors in config.yaml (dataset: mirrors)."
)
SPLITS = ("train", "val", "test")


def load_fashion_mnist(raw_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The official train (60k) and test (10k) sets from the downloaded idx files."""
    raw = Path(raw_dir)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(raw / f"{prefix}-images-idx3-ubyte")
        labels = read_idx(raw / f"{prefix}-labels-idx1-ubyte")
        if len(images) != len(labels):
            raise QuantflowError(
                f"{raw}: {prefix} has {len(images)} images but {len(labels)} labels; "
                "delete the directory and rerun to download the files again"
            )
        out[split] = (images[..., np.newaxis], labels.astype(np.int32))
    return out


def make_splits(train, test, validation_size: int, seed: int,
                max_train: int | None = None, max_test: int | None = None, val=None):
    """Seeded hold-out of `validation_size` training images (unless a `val` split is
    given); optional seeded subsets for quick runs. x may hold images or image paths."""
    x, y = train
    if val is not None:
        train_idx = np.random.default_rng(seed).permutation(len(x))
        if max_train is not None:
            train_idx = train_idx[:max_train]
        rng = np.random.default_rng(seed + 1)
        test_idx = np.arange(len(test[1]))
        if max_test is not None:
            test_idx = np.sort(rng.permutation(len(test[1]))[:max_test])
        return {"train": (x[np.sort(train_idx)], y[np.sort(train_idx)]), "val": val,
                "test": (test[0][test_idx], test[1][test_idx])}
    if not 0 < validation_size < len(x):
        raise QuantflowError(
            f"dataset.validation_size={validation_size} must be between 1 and {len(x) - 1} "
            f"(the training set has {len(x)} images)"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    val_idx, train_idx = order[:validation_size], order[validation_size:]
    if max_train is not None:
        train_idx = train_idx[:max_train]
    xt, yt = test
    test_idx = np.arange(len(xt))
    if max_test is not None:
        test_idx = np.sort(rng.permutation(len(xt))[:max_test])
    return {
        "train": (x[np.sort(train_idx)], y[np.sort(train_idx)]),
        "val": (x[np.sort(val_idx)], y[np.sort(val_idx)]),
        "test": (xt[test_idx], yt[test_idx]),
    }


def save_split(path: str | Path, x: np.ndarray, labels: np.ndarray) -> None:
    """Write a split atomically: uint8 `images`, or image `paths` when x holds strings."""
    import io

    from quantflow.atomic import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"paths": x} if x.dtype.kind in "US" else {"images": x.astype(np.uint8)}
    buffer = io.BytesIO()
    np.savez(buffer, labels=labels.astype(np.int32), **arrays)
    write_atomic(path, buffer.getbuffer())


def write_info(path: str | Path, name: str, class_names: list[str], splits: dict,
               image_size=None) -> None:
    """info.json: classes, the model input shape (the images' own, or `image_size` [h, w]
    for image files or to resize in-memory images), split sizes and class counts."""
    x = splits["train"][0]
    if x.dtype.kind in "US":
        shape = [*(image_size or (224, 224)), 3]
    else:
        shape = [*(image_size or x.shape[1:3]), x.shape[3]]
    info = {
        "dataset": name,
        "kind": "files" if x.dtype.kind in "US" else "arrays",
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "input_shape": [int(v) for v in shape],
        "sizes": {k: int(len(v[1])) for k, v in splits.items()},
        "class_counts": {k: np.bincount(v[1], minlength=len(class_names)).tolist()
                         for k, v in splits.items()},
    }
    Path(path).write_text(json.dumps(info, indent=2) + "\n")


def read_info(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 pixels in [0, 255], the input every model of the project
    takes (each model scales them itself). An int8 model input then has scale 1 and zero
    point -128: the int8 input loses nothing."""
    return images.astype(np.float32)


DEFAULT_MIRRORS = {
    "fashion_mnist": [
        "file:///usr/share/datasets/fashion-mnist",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion",
    ],
    "cifar10": [CIFAR10_URL.rsplit("/", 1)[0]],
    "oxford_pets": [OXFORD_PETS_IMAGES_URL.rsplit("/", 1)[0]],
    "image_list": [],
}
# The Oxford-IIIT Pet authors publish no checksums; these are the ones torchvision pins.
OXFORD_PETS_CHECKSUMS = {
    "images.tar.gz": "md5:5c4f3ee8e5d25df40f4fd59a7f44e54c",
    "annotations.tar.gz": "md5:95a8c909bbe2e81eed6a22bccdf3f68f",
}
DATASETS = tuple(DEFAULT_MIRRORS)
NETWORK_HINT = "Allow network access to one of the mirrors, or put the files in a local folder and list it first under dataset: mirrors."


def fetch_dataset(name: str, raw_dir: str | Path, *, mirrors=None, checksums=None,
                  retries: int = 3, timeout: float = 60) -> dict:
    """Download (and unpack) what dataset `name` needs into `raw_dir`; returns a manifest.

    `mirrors` default to DEFAULT_MIRRORS[name]; `checksums` ({file name: "md5:..." or
    "sha256:..."}) override the built-in ones. An image list downloads nothing."""
    from quantflow.archives import extract_archive
    from quantflow.download import fetch_from_mirrors

    raw = Path(raw_dir)
    mirrors = list(mirrors or DEFAULT_MIRRORS[name])
    checksums = dict(checksums or {})
    common = {"retries": retries, "timeout": timeout}
    files = {}
    if name == "fashion_mnist":
        for file, checksum in FASHION_MNIST_FILES.items():
            checksum = checksums.get(file, checksum)
            fetch_from_mirrors(f"{file}.gz", mirrors, raw, checksum, gunzip=True,
                               hint=FASHION_MNIST_HINT, **common)
            files[file] = checksum
    elif name in ("cifar10", "oxford_pets"):
        archives = ({CIFAR10_ARCHIVE: CIFAR10_CHECKSUM} if name == "cifar10"
                    else OXFORD_PETS_CHECKSUMS)
        for archive, checksum in archives.items():
            checksum = checksums.get(archive, checksum)
            path = fetch_from_mirrors(archive, mirrors, raw, checksum, hint=NETWORK_HINT,
                                      **common)
            extract_archive(path, raw / archive.split(".")[0])
            path.unlink()  # unpacked and verified: the archive is no longer needed
            files[archive] = checksum
    elif name != "image_list":
        raise QuantflowError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return {"dataset": name, "files": files}


def load_dataset(name: str, raw_dir: str | Path, *, root=None, train_list=None,
                 test_list=None, val_list=None, class_names=None) -> dict:
    """{"train": (x, y), "test": (x, y), "val": (x, y) or None, "class_names": [...]}:
    x holds uint8 images (in-memory datasets) or image paths (image-file datasets)."""
    raw = Path(raw_dir)
    val = None
    if name == "fashion_mnist":
        loaded, names = load_fashion_mnist(raw), FASHION_MNIST_CLASSES
    elif name == "cifar10":
        loaded, names = load_cifar10(raw / "cifar-10-python"), CIFAR10_CLASSES
    elif name == "oxford_pets":
        pets = load_oxford_pets(raw / "images", raw / "annotations")
        loaded = {"train": _as_arrays(pets["trainval"]), "test": _as_arrays(pets["test"])}
        names = pets["class_names"]
    elif name == "image_list":
        if not (root and train_list and test_list):
            raise QuantflowError(
                "dataset image_list needs dataset: root, train_list and test_list in the config"
            )
        loaded = {"train": _as_arrays(parse_image_list(train_list, root)),
                  "test": _as_arrays(parse_image_list(test_list, root))}
        if val_list:
            val = _as_arrays(parse_image_list(val_list, root))
        top = int(max(loaded["train"][1].max(), loaded["test"][1].max()))
        names = list(class_names) if class_names else [str(i) for i in range(top + 1)]
        if top >= len(names):
            raise QuantflowError(f"label {top} found, but only {len(names)} class_names given")
    else:
        raise QuantflowError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return {**loaded, "val": val, "class_names": list(names)}


def _as_arrays(entries) -> tuple[np.ndarray, np.ndarray]:
    paths = np.array([str(Path(p).resolve()) for p, _ in entries])
    return paths, np.array([label for _, label in entries], dtype=np.int32)


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
            raise QuantflowError(f"{path}: not a prepared split ({e}); delete it and rerun the prepare rule") from e
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
        from quantflow.imagelist import resize_and_crop

        out = [resize_and_crop(im, self.image_size) for im in images]
        return np.stack([o if o.ndim == 3 else o[..., None] for o in out])

    def take(self, indices) -> np.ndarray:
        """The images at `indices` as float32 pixels (small subsets: calibration, latency)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.images is not None:
            return preprocess(self._resized(self.images[indices]))
        from quantflow.imagelist import load_images

        return preprocess(load_images(self._entries(indices), self.image_size)[0])

    def sample(self, count: int, seed: int) -> np.ndarray:
        """`count` images drawn with `seed` (all when fewer), in split order, as `take`
        gives them: the held-out samples of checks and diagnoses."""
        return self.take(np.sort(np.random.default_rng(seed).permutation(len(self))[:count]))

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                augment: bool = False):
        """A tf.data.Dataset of (float32 images, int32 labels) batches."""
        import tensorflow as tf

        if self.paths is not None:
            from quantflow.imagelist import make_dataset

            return make_dataset(self._entries(), self.image_size, batch_size, shuffle=shuffle,
                                seed=seed, augment=augment)
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
                yield preprocess(self._resized(self.images[i : i + batch_size])), \
                    self.labels[i : i + batch_size]
            return
        for x, y in self.batches(batch_size).as_numpy_iterator():
            yield x, y

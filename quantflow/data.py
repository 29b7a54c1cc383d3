"""Datasets: the files each one needs, and its train / validation / test splits.

A prepared split is an `.npz` with `images` (uint8, N x H x W x C) and `labels` (int32);
`info.json` beside the splits names the classes. Models see pixels through `preprocess`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

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
                max_train: int | None = None, max_test: int | None = None):
    """Seeded hold-out of `validation_size` training images; optional subsets for quick runs.

    Subsets are stratified-free but seeded: the same config gives the same images.
    """
    x, y = train
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


def save_split(path: str | Path, images: np.ndarray, labels: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=images.astype(np.uint8), labels=labels.astype(np.int32))
    tmp.replace(path)


def load_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 NHWC, labels int32) of a prepared split."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return f["images"], f["labels"]
    except (OSError, KeyError, ValueError) as e:
        raise QuantflowError(f"{path}: not a prepared split ({e}); delete it and rerun") from e


def write_info(path: str | Path, name: str, class_names: list[str], splits: dict) -> None:
    info = {
        "dataset": name,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "input_shape": list(splits["train"][0].shape[1:]),
        "sizes": {k: int(len(v[1])) for k, v in splits.items()},
        "class_counts": {k: np.bincount(v[1], minlength=len(class_names)).tolist()
                         for k, v in splits.items()},
    }
    Path(path).write_text(json.dumps(info, indent=2) + "\n")


def read_info(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1], the input every built-in model expects.

    With this scaling an int8 model input (scale 1/255, zero point -128) is lossless.
    """
    return images.astype(np.float32) * np.float32(1.0 / 255.0)


# Registries by dataset name: the files to download (with checksums of their payloads),
# what to tell a user who has none of them, the loader and the class names.
DATASET_FILES = {"fashion_mnist": FASHION_MNIST_FILES}
DATASET_HINTS = {"fashion_mnist": FASHION_MNIST_HINT}
LOADERS = {"fashion_mnist": load_fashion_mnist}
CLASS_NAMES = {"fashion_mnist": FASHION_MNIST_CLASSES}

"""From downloaded files to prepared splits: load a dataset, hold out validation, write the
split files and info.json (the prepare job).

A prepared split is an `.npz` with `labels` and either `images` (uint8, N x H x W x C) or
`paths` (image files); `info.json` beside the splits names the classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from quantflow.data.readers import (
    CIFAR10_CLASSES,
    DATASETS,
    FASHION_MNIST_CLASSES,
    load_cifar10,
    load_fashion_mnist,
    load_oxford_pets,
    parse_image_list,
)
from quantflow.errors import QuantflowError


def make_splits(
    train,
    test,
    validation_size: int,
    seed: int,
    max_train: int | None = None,
    max_test: int | None = None,
    val=None,
):
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
        return {
            "train": (x[np.sort(train_idx)], y[np.sort(train_idx)]),
            "val": val,
            "test": (test[0][test_idx], test[1][test_idx]),
        }
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

    from quantflow.formats.atomic import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"paths": x} if x.dtype.kind in "US" else {"images": x.astype(np.uint8)}
    buffer = io.BytesIO()
    np.savez(buffer, labels=labels.astype(np.int32), **arrays)
    write_atomic(path, buffer.getbuffer())


def write_info(
    path: str | Path, name: str, class_names: list[str], splits: dict, image_size=None
) -> None:
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
        "class_counts": {
            k: np.bincount(v[1], minlength=len(class_names)).tolist() for k, v in splits.items()
        },
    }
    Path(path).write_text(json.dumps(info, indent=2) + "\n")


def load_dataset(
    name: str,
    raw_dir: str | Path,
    *,
    root=None,
    train_list=None,
    test_list=None,
    val_list=None,
    class_names=None,
) -> dict:
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
        loaded = {
            "train": _as_arrays(parse_image_list(train_list, root)),
            "test": _as_arrays(parse_image_list(test_list, root)),
        }
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

"""Loaders for real image datasets: CIFAR-10, Oxford-IIIT Pet and generic image lists.

Download with quantflow.data.download.download_file, unpack with
quantflow.data.archives.extract_archive, then load here. CIFAR-10 comes back as uint8 arrays
(N x 32 x 32 x 3, RGB); the larger datasets come back as (image path, label) lists for
quantflow.data.stream to decode in a streaming pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from quantflow.data.idx import read_idx
from quantflow.errors import QuantflowError
from quantflow.formats.safepickle import safe_load

DATASETS = ("fashion_mnist", "cifar10", "oxford_pets", "image_list")  # the names config accepts

# --- CIFAR-10 (https://www.cs.toronto.edu/~kriz/cifar.html) ---------------------------------

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CHECKSUM = "md5:c58f30108f718f92721af3b95e74349a"  # of the .tar.gz, as published
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_DIRNAME = "cifar-10-batches-py"
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
_CIFAR10_PIXELS = 32 * 32 * 3

# --- Oxford-IIIT Pet (https://www.robots.ox.ac.uk/~vgg/data/pets/) --------------------------

OXFORD_PETS_IMAGES_URL = "https://thor.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz"
OXFORD_PETS_ANNOTATIONS_URL = "https://thor.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz"
# The authors publish no checksums. These stay None: the workflow must take a checksum
# from its config (dataset: checksums) and refuse to download without one, rather than
# trust an unverified value. For reference only (not verified here), torchvision
# pins md5:5c4f3ee8e5d25df40f4fd59a7f44e54c (images) and md5:95a8c909bbe2e81eed6a22bccdf3f68f
# (annotations).
OXFORD_PETS_IMAGES_CHECKSUM: str | None = None
OXFORD_PETS_ANNOTATIONS_CHECKSUM: str | None = None
OXFORD_PETS_NUM_CLASSES = 37
OXFORD_PETS_SPLITS = ("trainval", "test")


# --- CIFAR-10 -------------------------------------------------------------------------------


def find_cifar10_root(directory: str | os.PathLike[str]) -> Path:
    """The `cifar-10-batches-py` folder at, inside or below `directory`."""
    base = Path(directory)
    if (base / CIFAR10_TEST_BATCH).is_file():
        return base
    if (base / CIFAR10_DIRNAME).is_dir():
        return base / CIFAR10_DIRNAME
    if base.is_dir():
        for candidate in sorted(base.rglob(CIFAR10_DIRNAME)):
            if candidate.is_dir():
                return candidate
    raise QuantflowError(
        f"no {CIFAR10_DIRNAME} folder in {base}: extract {CIFAR10_ARCHIVE} "
        f"(from {CIFAR10_URL}) there, or point the workflow at the folder holding it"
    )


def load_cifar10(extracted_dir: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (x, y), "test": (x, y)}: x uint8 N x 32 x 32 x 3 RGB, y int32 in 0..9.

    `extracted_dir` is the `cifar-10-batches-py` folder or a folder containing it. The
    train split concatenates data_batch_1..5 in order (50,000 images in the real set).
    """
    root = find_cifar10_root(extracted_dir)
    train = [_read_cifar10_batch(root / name) for name in CIFAR10_TRAIN_BATCHES]
    return {
        "train": (
            np.concatenate([x for x, _ in train]),
            np.concatenate([y for _, y in train]),
        ),
        "test": _read_cifar10_batch(root / CIFAR10_TEST_BATCH),
    }


def _read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One python-format batch: data N x 3072 (R, G, B planes of 32 x 32) and N labels."""
    fix = "delete the folder and extract cifar-10-python.tar.gz again"
    if not path.is_file():
        raise QuantflowError(f"CIFAR-10 batch {path} is missing; {fix}")
    batch = safe_load(path, encoding="bytes", what="CIFAR-10 batch")
    if not isinstance(batch, dict):
        raise QuantflowError(
            f"CIFAR-10 batch {path} holds a {type(batch).__name__}, not a dict; {fix}"
        )
    data, labels = _entry(batch, "data", path), _entry(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != _CIFAR10_PIXELS:
        shape = getattr(data, "shape", type(data).__name__)
        raise QuantflowError(
            f"CIFAR-10 batch {path}: 'data' should be an N x {_CIFAR10_PIXELS} uint8 array, "
            f"got {shape}; {fix}"
        )
    if data.dtype != np.uint8:
        raise QuantflowError(f"CIFAR-10 batch {path}: 'data' is {data.dtype}, not uint8; {fix}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise QuantflowError(f"CIFAR-10 batch {path}: 'labels' is not a list of integers; {fix}")
    if y.shape != (len(data),):
        raise QuantflowError(
            f"CIFAR-10 batch {path} has {len(data)} images but {y.size} labels; {fix}"
        )
    if y.size and (y.min() < 0 or y.max() >= len(CIFAR10_CLASSES)):
        raise QuantflowError(
            f"CIFAR-10 batch {path}: labels must be 0..{len(CIFAR10_CLASSES) - 1}, "
            f"found {int(y.min())}..{int(y.max())}; {fix}"
        )
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return x, y.astype(np.int32)


def _entry(batch: dict, key: str, path: Path) -> object:
    """batch[b"key"] (Python 2 pickles read with encoding="bytes") or batch["key"]."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise QuantflowError(
        f"CIFAR-10 batch {path} has no {key!r} entry (keys: {sorted(map(str, batch))}); "
        "is it the python version of CIFAR-10 (cifar-10-python.tar.gz)?"
    )


# --- Oxford-IIIT Pet ------------------------------------------------------------------------


def load_oxford_pets(
    images_dir: str | os.PathLike[str], annotations_dir: str | os.PathLike[str]
) -> dict[str, list]:
    """{"trainval": [(path, label)], "test": [(path, label)], "class_names": [37 names]}.

    `images_dir` is the extracted `images` folder (or its parent), `annotations_dir` the
    `annotations` folder (or its parent). Labels are 0-based: the list files' class id
    minus 1. A class name is the image name without its trailing "_<number>"
    ("american_bulldog_10" -> "american_bulldog"), as the dataset names its files.
    """
    images = _subfolder(Path(images_dir), "images")
    annotations = _subfolder(Path(annotations_dir), "annotations")
    names: dict[int, tuple[str, Path, int]] = {}  # class id -> (name, list file, line)
    out: dict[str, list] = {}
    for split in OXFORD_PETS_SPLITS:
        out[split] = _read_pets_list(annotations / f"{split}.txt", images, names)
    missing = [i for i in range(1, max(names, default=0) + 1) if i not in names]
    if missing or not names:
        raise QuantflowError(
            f"{annotations}: class ids {missing or '1..37'} have no image in trainval.txt or "
            "test.txt; delete the annotations folder and extract annotations.tar.gz again"
        )
    out["class_names"] = [names[i][0] for i in sorted(names)]
    return out


def _subfolder(base: Path, name: str) -> Path:
    """`base/name` when it exists (an extraction folder), else `base` itself."""
    if (base / name).is_dir():
        return base / name
    if base.is_dir():
        return base
    raise QuantflowError(f"folder {base} does not exist; extract the Oxford-IIIT Pet {name} there")


def _read_pets_list(
    list_file: Path, images: Path, names: dict[int, tuple[str, Path, int]]
) -> list[tuple[Path, int]]:
    """Entries of trainval.txt / test.txt: "Abyssinian_100 1 1 1" (name, class id, species, breed)."""
    entries = []
    for number, line in _numbered_lines(list_file):
        fields = line.split()
        where = f"{list_file}, line {number}"
        if len(fields) != 4 or not all(f.isascii() and f.isdigit() for f in fields[1:]):
            raise QuantflowError(
                f"{where}: expected 'IMAGE_NAME CLASS_ID SPECIES BREED_ID' "
                f"(e.g. 'Abyssinian_100 1 1 1'), got {line!r}"
            )
        image_name, class_id = fields[0], int(fields[1])
        if not 1 <= class_id <= OXFORD_PETS_NUM_CLASSES:
            raise QuantflowError(
                f"{where}: class id {class_id} is not in 1..{OXFORD_PETS_NUM_CLASSES}"
            )
        if "/" in image_name or "\\" in image_name or image_name in (".", ".."):
            raise QuantflowError(f"{where}: {image_name!r} is not a plain image name")
        breed = image_name.rsplit("_", 1)[0]
        known = names.setdefault(class_id, (breed, list_file, number))
        if known[0] != breed:
            raise QuantflowError(
                f"{where}: class id {class_id} is {breed!r} here but {known[0]!r} at "
                f"{known[1]}, line {known[2]}; the list files disagree"
            )
        path = images / f"{image_name}.jpg"
        if not path.is_file():
            raise QuantflowError(
                f"{where}: image {path} does not exist; extract images.tar.gz into "
                f"{images.parent} or fix the line"
            )
        entries.append((path, class_id - 1))
    return entries


# --- generic image lists --------------------------------------------------------------------


def parse_image_list(
    list_file: str | os.PathLike[str], root: str | os.PathLike[str]
) -> list[tuple[Path, int]]:
    """[(root / relative path, label)] from lines "relative/path/to/image.JPEG LABEL".

    The label is the last whitespace-separated field (a non-negative integer); the rest
    of the line is the path, which may contain spaces. Blank lines and lines starting
    with # are skipped. Paths must be relative and stay inside `root` (checked on the
    text, so symbolic links inside `root` may point elsewhere).
    """
    list_file, root = Path(list_file), Path(root)
    if not root.is_dir():
        raise QuantflowError(f"image root {root} (for {list_file}) is not a folder")
    entries = []
    for number, line in _numbered_lines(list_file):
        where = f"{list_file}, line {number}"
        fields = line.rsplit(None, 1)
        if len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit()):
            raise QuantflowError(
                f"{where}: expected 'relative/path/to/image LABEL' with a non-negative "
                f"integer label, got {line!r}"
            )
        relative, label = fields[0].strip(), int(fields[1])
        normalized = os.path.normpath(relative.replace("\\", "/"))
        if os.path.isabs(normalized) or normalized == ".." or normalized.startswith("../"):
            raise QuantflowError(
                f"{where}: path {relative!r} leaves the image root {root}; "
                "write paths relative to the root, without leading '/' or '..'"
            )
        path = root / normalized
        if not path.is_file():
            raise QuantflowError(f"{where}: image {path} does not exist")
        entries.append((path, label))
    return entries


def _numbered_lines(list_file: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) for every non-blank, non-comment line."""
    try:
        text = list_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QuantflowError(f"list file {list_file} does not exist") from None
    except UnicodeDecodeError as e:
        raise QuantflowError(f"list file {list_file} is not UTF-8 text ({e})") from None
    except OSError as e:
        raise QuantflowError(f"cannot read list file {list_file}: {e.strerror or e}") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            lines.append((number, stripped))
    return lines


# --- Fashion-MNIST (idx files) ----------------------------------------------------------------

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


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

"""Where each dataset's files come from (mirrors, checksums) and fetching them: the download job."""

from __future__ import annotations

from pathlib import Path

from quantflow.data.readers import (
    CIFAR10_ARCHIVE,
    CIFAR10_CHECKSUM,
    CIFAR10_URL,
    DATASETS,
    OXFORD_PETS_IMAGES_URL,
)
from quantflow.errors import QuantflowError

# SHA-256 of the decompressed idx payloads. Debian's dataset-fashion-mnist recompresses
# the .gz files, so the digests of the archives differ; the payloads do not.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": "sha256:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "sha256:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "sha256:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "sha256:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


FASHION_MNIST_HINT = (
    "To get Fashion-MNIST offline, install the Debian package: "
    "`sudo apt-get install dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist); "
    "or allow network access to one of the HTTPS mirrors in config.yaml (dataset: mirrors)."
)


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


NETWORK_HINT = "Allow network access to one of the mirrors, or put the files in a local folder and list it first under dataset: mirrors."


def fetch_dataset(
    name: str,
    raw_dir: str | Path,
    *,
    mirrors=None,
    checksums=None,
    retries: int = 3,
    timeout: float = 60,
) -> dict:
    """Download (and unpack) what dataset `name` needs into `raw_dir`; returns a manifest.

    `mirrors` default to DEFAULT_MIRRORS[name]; `checksums` ({file name: "md5:..." or
    "sha256:..."}) override the built-in ones. An image list downloads nothing."""
    from quantflow.data.archives import extract_archive
    from quantflow.data.download import fetch_from_mirrors

    raw = Path(raw_dir)
    mirrors = list(mirrors or DEFAULT_MIRRORS[name])
    checksums = dict(checksums or {})
    common = {"retries": retries, "timeout": timeout}
    files = {}
    if name == "fashion_mnist":
        for file, checksum in FASHION_MNIST_FILES.items():
            checksum = checksums.get(file, checksum)
            fetch_from_mirrors(
                f"{file}.gz", mirrors, raw, checksum, gunzip=True, hint=FASHION_MNIST_HINT, **common
            )
            files[file] = checksum
    elif name in ("cifar10", "oxford_pets"):
        archives = (
            {CIFAR10_ARCHIVE: CIFAR10_CHECKSUM} if name == "cifar10" else OXFORD_PETS_CHECKSUMS
        )
        for archive, checksum in archives.items():
            checksum = checksums.get(archive, checksum)
            path = fetch_from_mirrors(archive, mirrors, raw, checksum, hint=NETWORK_HINT, **common)
            extract_archive(path, raw / archive.split(".")[0])
            path.unlink()  # unpacked and verified: the archive is no longer needed
            files[archive] = checksum
    elif name != "image_list":
        raise QuantflowError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return {"dataset": name, "files": files}

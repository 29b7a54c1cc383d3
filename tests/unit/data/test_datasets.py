"""Tests for quantflow.data.readers and quantflow.formats.safepickle: download, extract and load tiny
copies of CIFAR-10 and Oxford-IIIT Pet served over HTTP on 127.0.0.1."""

from __future__ import annotations

import collections
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from quantflow.data.archives import extract_archive
from quantflow.data.readers import (
    CIFAR10_CLASSES,
    find_cifar10_root,
    load_cifar10,
    load_oxford_pets,
    parse_image_list,
)
from quantflow.data.download import download_file
from quantflow.errors import QuantflowError
from quantflow.data.stream import decode_image
from quantflow.formats.safepickle import safe_load

FAST = {"retries": 3, "backoff": 0.01, "timeout": 5, "progress": False}


# --- a tiny HTTP server that can cut a transfer once and honours Range ----------------------


class _FileHandler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files[path]`; the first GET of a path in `server.cut` stops halfway."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        range_header = self.headers.get("Range")
        if range_header:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in server.cut:
            server.cut.discard(self.path)
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[str, http.server.HTTPServer]]]:
    """serve({"/name": bytes}, cut={"/name"}) -> (base URL, server with .requests)."""
    servers = []

    def start(files: dict[str, bytes], cut: set[str] = frozenset()):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FileHandler)
        server.daemon_threads = True
        server.files, server.cut, server.requests = files, set(cut), []
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)
        host, port = server.server_address[:2]
        return f"http://{host}:{port}", server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# --- Python 2 style pickles, like the real CIFAR-10 batches ---------------------------------


class Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 + numpy 1.x wrote it: str and bytes as byte strings
    (SHORT_BINSTRING / BINSTRING) and numpy globals under `numpy.core`."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_string(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def cifar_batch(rng: np.random.Generator, n: int, label: str) -> tuple[dict, np.ndarray]:
    """A batch dict as in cifar-10-python.tar.gz, and its raw N x 3072 planar data."""
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    batch = {
        b"batch_label": label.encode(),
        b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    return batch, data


@pytest.fixture
def cifar_tarball() -> tuple[bytes, list[dict]]:
    """A tiny cifar-10-python.tar.gz: 5 train batches of 3 images, a test batch of 4."""
    rng = np.random.default_rng(0)
    members, batches = {}, []
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        batch, _ = cifar_batch(rng, 4 if name == "test_batch" else 3, f"batch {i}")
        batches.append(batch)
        members[f"cifar-10-batches-py/{name}"] = py2_pickle(batch)
    meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
    members["cifar-10-batches-py/batches.meta"] = py2_pickle(meta)
    members["cifar-10-batches-py/readme.html"] = b"<html></html>"
    return tar_gz(members), batches


def test_cifar10_download_resume_extract_load(
    tmp_path: Path, serve: Callable, cifar_tarball: tuple[bytes, list[dict]]
) -> None:
    body, batches = cifar_tarball
    md5 = "md5:" + hashlib.md5(body).hexdigest()
    base, server = serve({"/cifar-10-python.tar.gz": body}, cut={"/cifar-10-python.tar.gz"})

    archive = download_file(
        [base + "/cifar-10-python.tar.gz"], tmp_path / "cifar-10-python.tar.gz", md5, **FAST
    )
    assert server.requests == [
        ("/cifar-10-python.tar.gz", None),
        ("/cifar-10-python.tar.gz", f"bytes={len(body) // 2}-"),  # resumed, not restarted
    ]
    created = extract_archive(archive, tmp_path / "cifar")
    assert tmp_path / "cifar/cifar-10-batches-py/data_batch_1" in created
    assert find_cifar10_root(tmp_path / "cifar") == tmp_path / "cifar/cifar-10-batches-py"

    splits = load_cifar10(tmp_path / "cifar")

    x_train, y_train = splits["train"]
    x_test, y_test = splits["test"]
    assert x_train.shape == (15, 32, 32, 3) and x_train.dtype == np.uint8
    assert x_test.shape == (4, 32, 32, 3) and x_test.dtype == np.uint8
    assert y_train.dtype == np.int32 and y_test.dtype == np.int32
    assert y_train.tolist() == sum((b[b"labels"] for b in batches[:5]), [])
    assert y_test.tolist() == batches[5][b"labels"]
    data = np.concatenate([b[b"data"] for b in batches[:5]])
    # Channel-planar rows: R(1024) G(1024) B(1024), each 32 rows of 32 pixels.
    for i in (0, 7, 14):
        for row, col in ((0, 0), (0, 1), (1, 0), (31, 31), (5, 17)):
            offset = row * 32 + col
            assert x_train[i, row, col].tolist() == [
                data[i, offset],
                data[i, 1024 + offset],
                data[i, 2048 + offset],
            ]
    expected = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(x_train, expected)
    np.testing.assert_array_equal(
        x_test, batches[5][b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    )
    # The root folder itself works as well.
    np.testing.assert_array_equal(
        load_cifar10(tmp_path / "cifar/cifar-10-batches-py")["test"][0], x_test
    )


def _cifar_dir(tmp_path: Path, override: dict[str, bytes]) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(override.get(name) or py2_pickle(cifar_batch(rng, 2, name)[0]))
    return root


class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_cifar_pickle_with_os_system_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    batch, _ = cifar_batch(np.random.default_rng(2), 2, "evil")
    batch[b"labels"] = _Evil(f"touch {marker}")
    root = _cifar_dir(tmp_path, {"data_batch_3": pickle.dumps(batch, protocol=2)})

    with pytest.raises(QuantflowError) as err:
        load_cifar10(root)

    message = str(err.value)
    assert f"'{os.system.__module__}.system'" in message  # "posix.system" on Linux
    assert str(root / "data_batch_3") in message
    assert "NOT executed" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "name, body, match",
    [
        ("data_batch_2", b"\x80\x02}q\x00(U\x04dataq", "truncated"),
        ("test_batch", b"not a pickle at all", "not a valid pickle"),
        ("data_batch_1", None, "3072"),  # wrong image size
        ("data_batch_5", None, "3 images but 2 labels"),
        ("data_batch_4", None, "labels must be 0..9"),
    ],
)
def test_bad_cifar_batches_are_clear_errors(
    tmp_path: Path, name: str, body: bytes | None, match: str
) -> None:
    if body is None:
        batch, _ = cifar_batch(np.random.default_rng(3), 3, "bad")
        if name == "data_batch_1":
            batch[b"data"] = np.zeros((3, 1024), np.uint8)
        elif name == "data_batch_5":
            batch[b"labels"] = batch[b"labels"][:2]
        else:
            batch[b"labels"][1] = 10
        body = py2_pickle(batch)
    root = _cifar_dir(tmp_path, {name: body})
    with pytest.raises(QuantflowError, match=match) as err:
        load_cifar10(root)
    assert str(root / name) in str(err.value)


def test_missing_cifar_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QuantflowError, match="no cifar-10-batches-py folder"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("dtype", ["uint8", "float32", "int64"])
def test_safe_load_round_trips_numpy(tmp_path: Path, protocol: int, dtype: str) -> None:
    array = (np.arange(24) * 7).astype(dtype).reshape(2, 3, 4)
    obj = collections.OrderedDict(
        array=array, fortran=np.asfortranarray(array), scalar=array.flat[5], dtype=array.dtype
    )
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    loaded = safe_load(path)
    assert isinstance(loaded, collections.OrderedDict)
    np.testing.assert_array_equal(loaded["array"], array)
    assert loaded["array"].dtype == array.dtype
    np.testing.assert_array_equal(loaded["fortran"], array)
    assert loaded["scalar"] == array.flat[5] and loaded["dtype"] == array.dtype


def test_safe_load_file_object_and_forbidden_global() -> None:
    assert safe_load(io.BytesIO(py2_pickle({b"k": [1, 2]})), encoding="bytes") == {b"k": [1, 2]}
    evil = pickle.dumps({"x": collections.Counter("ab")}, protocol=2)
    with pytest.raises(QuantflowError, match="'collections.Counter'.*NOT executed"):
        safe_load(io.BytesIO(evil), what="weights file")


# --- Oxford-IIIT Pet ------------------------------------------------------------------------

PETS = {  # image name -> (class id, species, breed id, colour RGB)
    "Abyssinian_1": (1, 1, 1, (200, 30, 30)),
    "Abyssinian_2": (1, 1, 1, (180, 40, 40)),
    "american_bulldog_10": (2, 2, 1, (30, 200, 30)),
    "american_bulldog_11": (2, 2, 1, (40, 180, 40)),
    "american_pit_bull_terrier_3": (3, 2, 2, (30, 30, 200)),
    "american_pit_bull_terrier_4": (3, 2, 2, (40, 40, 180)),
}
HEADER = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n"


def _pets_lines(names: list[str]) -> str:
    return HEADER + "".join("{} {} {} {}\n".format(name, *PETS[name][:3]) for name in names)


def _jpeg(rgb: tuple[int, int, int], height: int, width: int) -> bytes:
    image = np.full((height, width, 3), rgb[::-1], np.uint8)  # cv2 wants BGR
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


def test_oxford_pets_download_extract_load(tmp_path: Path, serve: Callable) -> None:
    images = tar_gz(
        {
            f"images/{name}.jpg": _jpeg(v[3], 30 + 4 * i, 40)
            for i, (name, v) in enumerate(PETS.items())
        }
    )
    trainval = ["Abyssinian_1", "american_bulldog_10", "american_pit_bull_terrier_3"]
    test = ["Abyssinian_2", "american_bulldog_11", "american_pit_bull_terrier_4"]
    annotations = tar_gz(
        {
            "annotations/trainval.txt": _pets_lines(trainval).encode(),
            "annotations/test.txt": _pets_lines(test).encode(),
            "annotations/list.txt": _pets_lines(trainval + test).encode(),
        }
    )
    base, server = serve(
        {"/pets/images.tar.gz": images, "/pets/annotations.tar.gz": annotations},
        cut={"/pets/images.tar.gz"},
    )
    raw = tmp_path / "raw"
    for name, body in (("images.tar.gz", images), ("annotations.tar.gz", annotations)):
        checksum = "sha256:" + hashlib.sha256(body).hexdigest()
        download_file([f"{base}/pets/{name}"], raw / name, checksum, **FAST)
    assert server.requests[1] == ("/pets/images.tar.gz", f"bytes={len(images) // 2}-")
    extract_archive(raw / "images.tar.gz", tmp_path / "pets-images")
    extract_archive(raw / "annotations.tar.gz", tmp_path / "pets-annotations")

    pets = load_oxford_pets(tmp_path / "pets-images", tmp_path / "pets-annotations")

    assert pets["class_names"] == ["Abyssinian", "american_bulldog", "american_pit_bull_terrier"]
    image_dir = tmp_path / "pets-images/images"
    assert pets["trainval"] == [(image_dir / f"{n}.jpg", PETS[n][0] - 1) for n in trainval]
    assert pets["test"] == [(image_dir / f"{n}.jpg", PETS[n][0] - 1) for n in test]
    for path, _ in pets["trainval"]:
        pixels = decode_image(path, (16, 16))
        colour = PETS[path.stem][3]
        assert np.abs(pixels.astype(int) - colour).max() <= 4  # JPEG is lossy, RGB order kept
    # The extracted folders themselves work too.
    again = load_oxford_pets(image_dir, tmp_path / "pets-annotations/annotations")
    assert again["test"] == pets["test"]


def _pets_layout(tmp_path: Path, test_text: str) -> tuple[Path, Path]:
    images, annotations = tmp_path / "images", tmp_path / "annotations"
    images.mkdir()
    annotations.mkdir()
    for name, v in PETS.items():
        (images / f"{name}.jpg").write_bytes(_jpeg(v[3], 8, 8))
    (annotations / "trainval.txt").write_text(_pets_lines(list(PETS)))
    (annotations / "test.txt").write_text(test_text)
    return images, annotations


def test_oxford_pets_missing_image_names_list_file_and_line(tmp_path: Path) -> None:
    text = _pets_lines(["Abyssinian_2"]) + "\nBengal_99 6 1 6\n"  # line 6, after a blank line
    images, annotations = _pets_layout(tmp_path, text)
    with pytest.raises(QuantflowError) as err:
        load_oxford_pets(tmp_path, tmp_path)
    message = str(err.value)
    assert f"{annotations / 'test.txt'}, line 6" in message
    assert str(images / "Bengal_99.jpg") in message


@pytest.mark.parametrize(
    "line, match",
    [
        ("Abyssinian_2 1 1", "expected 'IMAGE_NAME CLASS_ID SPECIES BREED_ID'"),
        ("Abyssinian_2 x 1 1", "expected 'IMAGE_NAME CLASS_ID SPECIES BREED_ID'"),
        ("Abyssinian_2 38 1 1", "class id 38 is not in 1..37"),
        ("Abyssinian_2 2 1 1", "class id 2 is 'Abyssinian' here but 'american_bulldog'"),
        ("../images/Abyssinian_2 1 1 1", "not a plain image name"),
    ],
)
def test_oxford_pets_bad_lines(tmp_path: Path, line: str, match: str) -> None:
    _, annotations = _pets_layout(tmp_path, HEADER + line + "\n")
    with pytest.raises(QuantflowError, match=match) as err:
        load_oxford_pets(tmp_path, tmp_path)
    assert f"{annotations / 'test.txt'}, line 4" in str(err.value)


def test_parse_image_list_resolves_paths_under_root(tmp_path: Path) -> None:
    (tmp_path / "n01/sub dir").mkdir(parents=True)
    (tmp_path / "n01/sub dir/a b.JPEG").write_bytes(b"x")
    (tmp_path / "n01/c.JPEG").write_bytes(b"x")
    listing = tmp_path / "val.txt"
    listing.write_text("# comment\n\nn01/sub dir/a b.JPEG 7\n  ./n01/x/../c.JPEG\t0  \n")
    assert parse_image_list(listing, tmp_path) == [
        (tmp_path / "n01/sub dir/a b.JPEG", 7),
        (tmp_path / "n01/c.JPEG", 0),
    ]


def test_fetch_and_load_dataset_cifar10_through_the_workflow_functions(
    tmp_path: Path, serve: Callable, cifar_tarball: tuple[bytes, list[dict]]
) -> None:
    """quantflow.data's fetch_dataset / load_dataset / make_splits, as the download and
    prepare rules call them, against a local mirror of the CIFAR-10 tarball."""
    from quantflow.data.readers import CIFAR10_CLASSES
    from quantflow.data.sources import fetch_dataset
    from quantflow.data.splits import Split
    from quantflow.data.prepare import load_dataset, make_splits, save_split

    body, batches = cifar_tarball
    base, _ = serve({"/cifar-10-python.tar.gz": body})
    raw = tmp_path / "raw"
    with pytest.raises(QuantflowError, match="md5 mismatch"):  # the built-in official md5
        fetch_dataset("cifar10", raw, mirrors=[base], retries=1)
    md5 = "md5:" + hashlib.md5(body).hexdigest()
    manifest = fetch_dataset(
        "cifar10", raw, mirrors=[base], checksums={"cifar-10-python.tar.gz": md5}, retries=1
    )
    assert manifest == {"dataset": "cifar10", "files": {"cifar-10-python.tar.gz": md5}}
    assert not (raw / "cifar-10-python.tar.gz").exists()  # unpacked, archive removed
    loaded = load_dataset("cifar10", raw)
    assert loaded["class_names"] == CIFAR10_CLASSES and loaded["val"] is None
    splits = make_splits(loaded["train"], loaded["test"], validation_size=5, seed=0)
    assert [len(splits[s][1]) for s in ("train", "val", "test")] == [10, 5, 4]
    save_split(tmp_path / "train.npz", *splits["train"])
    split = Split(tmp_path / "train.npz")
    assert split.image_size == (32, 32) and len(split) == 10
    x, _ = next(split.numpy_batches(4))
    assert x.dtype == np.float32 and x.shape == (4, 32, 32, 3) and x.max() <= 255

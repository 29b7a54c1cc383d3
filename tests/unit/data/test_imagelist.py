"""Tests for quantflow.data.stream (decode, resize/crop, tf.data pipeline) and image lists."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from quantflow.data.readers import parse_image_list
from quantflow.errors import QuantflowError
from quantflow.data.stream import (
    decode_image,
    load_images,
    make_dataset,
    pipeline_errors,
    quantflow_error_from,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def write_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))  # cv2 writes BGR
    return path


def wide_image() -> np.ndarray:
    """20 x 40: columns 0-9 red, 10-29 green, 30-39 blue."""
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :10], image[:, 10:30], image[:, 30:] = RED, GREEN, BLUE
    return image


def tall_image() -> np.ndarray:
    """8 x 4: rows 0-3 black, rows 4-7 white."""
    image = np.zeros((8, 4, 3), np.uint8)
    image[4:] = 255
    return image


@pytest.fixture
def image_root(tmp_path: Path) -> tuple[Path, Path]:
    """(root with class folders of PNGs, list file "relative/path label" with comments)."""
    root = tmp_path / "root"
    write_png(root / "a/wide.png", wide_image())
    write_png(root / "a/tall.png", tall_image())
    for i in range(3):
        write_png(root / f"b/solid{i}.png", np.full((12, 12, 3), 40 * (i + 1), np.uint8))
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# path label\n"
        "a/wide.png 0\n"
        "\n"
        "a/tall.png 1\n"
        "b/solid0.png 2\n"
        "   b/solid1.png    3   \n"
        "b/solid2.png 4\n"
    )
    return root, listing


def test_wide_image_is_resized_then_centre_cropped(tmp_path: Path) -> None:
    path = write_png(tmp_path / "wide.png", wide_image())
    image = decode_image(path, (10, 10))
    assert image.shape == (10, 10, 3) and image.dtype == np.uint8
    # Height 20 -> 10 (width 40 -> 20), then the middle 10 columns: all green, RGB order.
    assert (image == GREEN).all()
    rect = decode_image(path, (10, 20))  # the whole resized image: red, green, blue bands
    assert rect[5, 0].tolist() == list(RED)
    assert rect[5, 10].tolist() == list(GREEN)
    assert rect[5, 19].tolist() == list(BLUE)


def test_small_image_is_enlarged_then_cropped(tmp_path: Path) -> None:
    path = write_png(tmp_path / "tall.png", tall_image())
    image = decode_image(path, (16, 16))
    # Width 4 -> 16 (height 8 -> 32), keep rows 8..23: original rows ~2..6.
    assert image.shape == (16, 16, 3)
    assert image[0, 8].tolist() == [0, 0, 0]
    assert image[15, 8].tolist() == [255, 255, 255]
    assert 0 < image[8, 8, 0] < 255  # the edge, interpolated


def test_grayscale_decoding(tmp_path: Path) -> None:
    path = write_png(tmp_path / "wide.png", wide_image())
    gray = decode_image(path, (10, 10), channels=1)
    assert gray.shape == (10, 10, 1)
    expected = cv2.cvtColor(np.uint8([[GREEN]]), cv2.COLOR_RGB2GRAY)[0, 0]
    assert (np.abs(gray.astype(int) - int(expected)) <= 1).all()


def test_dataset_shapes_labels_and_batches(image_root: tuple[Path, Path]) -> None:
    root, listing = image_root
    entries = parse_image_list(listing, root)
    assert [label for _, label in entries] == [0, 1, 2, 3, 4]
    assert entries[3][0] == root / "b/solid1.png"

    ds = make_dataset(entries, (10, 10), batch_size=2)
    batches = list(ds)

    assert [tuple(x.shape) for x, _ in batches] == [(2, 10, 10, 3)] * 2 + [(1, 10, 10, 3)]
    assert all(x.dtype.name == "float32" and y.dtype.name == "int32" for x, y in batches)
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert labels.tolist() == [0, 1, 2, 3, 4]
    images = np.concatenate([x.numpy() for x, _ in batches])
    assert images.min() >= 0 and images.max() <= 255 and images.max() > 1  # [0, 255], not [0, 1]
    np.testing.assert_array_equal(images[0], np.full((10, 10, 3), GREEN, np.float32))
    np.testing.assert_array_equal(images[3], np.full((10, 10, 3), 80, np.float32))
    x, y = load_images(entries, (10, 10))
    assert x.shape == (5, 10, 10, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(x.astype(np.float32), images)
    gray = next(iter(make_dataset(entries, (6, 8), 5, channels=1)))[0]
    assert tuple(gray.shape) == (5, 6, 8, 1)


def test_shuffle_and_augment_are_seeded(image_root: tuple[Path, Path]) -> None:
    root, listing = image_root
    entries = parse_image_list(listing, root)

    def run(seed: int, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        ds = make_dataset(entries, (10, 10), 5, seed=seed, **kwargs)
        x, y = next(iter(ds))
        return x.numpy(), y.numpy()

    _, first = run(3, shuffle=True)
    _, again = run(3, shuffle=True)
    assert first.tolist() == again.tolist()
    assert sorted(first.tolist()) == [0, 1, 2, 3, 4]
    orders = {tuple(run(seed, shuffle=True)[1]) for seed in range(6)}
    assert len(orders) > 1  # the seed matters

    aug, labels = run(7, augment=True, crop_padding=0.25)
    aug_again, _ = run(7, augment=True, crop_padding=0.25)
    assert aug.shape == (5, 10, 10, 3) and labels.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(aug, aug_again)
    # The centre of the wide image is all green: flipping it changes nothing; the tall
    # image, cropped at random from a larger resize, differs across seeds.
    wide = {run(seed, augment=True)[0][0].tobytes() for seed in range(8)}
    assert len(wide) == 1  # all green after a centre crop: flipping changes nothing
    tall = {run(seed, augment=True, crop_padding=0.5)[0][1].tobytes() for seed in range(8)}
    assert len(tall) > 1
    np.testing.assert_array_equal(aug[2], np.full((10, 10, 3), 40, np.float32))


def test_flip_is_horizontal(tmp_path: Path) -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    image[:, :5] = RED  # left half red, right half black
    path = write_png(tmp_path / "half.png", image)
    seen = set()
    for seed in range(10):
        x, _ = next(iter(make_dataset([(path, 0)], (10, 10), 1, augment=True, seed=seed)))
        left = x.numpy()[0, :, 0, 0]
        assert (left == 255).all() or (left == 0).all()  # columns move, rows do not
        seen.add(int(left[0]))
    assert seen == {0, 255}


def test_missing_and_garbage_images_name_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG but not really" * 10)
    with pytest.raises(QuantflowError, match=f"cannot decode image {garbage}"):
        decode_image(garbage, (8, 8))
    with pytest.raises(QuantflowError, match=f"image {tmp_path / 'gone.png'} does not exist"):
        decode_image(tmp_path / "gone.png", (8, 8))

    good = write_png(tmp_path / "good.png", wide_image())
    ds = make_dataset([(good, 0), (good, 1), (garbage, 2)], (8, 8), batch_size=2)
    with pytest.raises(QuantflowError, match=f"^cannot decode image {garbage}: ") as err:
        with pipeline_errors():
            for _ in ds:
                pass
    assert "Traceback" not in str(err.value)

    import tensorflow as tf  # without the wrapper: a TensorFlow error carrying the message

    with pytest.raises(tf.errors.OpError) as raw:
        list(ds)
    assert f"QuantflowError: cannot decode image {garbage}" in raw.value.message
    assert str(quantflow_error_from(raw.value)) == str(err.value)


@pytest.mark.parametrize(
    "line, match",
    [
        ("a/missing.png 1", "image .*a/missing.png does not exist"),
        ("a/wide.png", "expected 'relative/path/to/image LABEL'"),
        ("a/wide.png -1", "non-negative integer label"),
        ("a/wide.png 1.5", "non-negative integer label"),
        ("../outside.png 0", "leaves the image root"),
        ("a/../../outside.png 0", "leaves the image root"),
        ("/etc/passwd 0", "leaves the image root"),
    ],
)
def test_bad_list_lines_name_file_and_line(
    image_root: tuple[Path, Path], line: str, match: str
) -> None:
    root, listing = image_root
    (root.parent / "outside.png").write_bytes(listing.read_bytes())  # exists, but outside
    listing.write_text(listing.read_text() + "# more\n" + line + "\n")
    with pytest.raises(QuantflowError, match=match) as err:
        parse_image_list(listing, root)
    assert f"{listing}, line 9:" in str(err.value)


def test_missing_list_file_and_root(tmp_path: Path) -> None:
    with pytest.raises(QuantflowError, match="list file .* does not exist"):
        parse_image_list(tmp_path / "nope.txt", tmp_path)
    with pytest.raises(QuantflowError, match="is not a folder"):
        parse_image_list(tmp_path / "nope.txt", tmp_path / "no-root")

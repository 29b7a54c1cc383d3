"""The real `snakemake` command on a tiny image_list dataset (generated PNGs) with
MobileNetV2: list parsing, streamed decoding, a zoo model, int8 conversion, LiteRT."""

import json

import cv2
import numpy as np
import pytest
import yaml

from conftest import run_snakemake

pytestmark = pytest.mark.workflow

CLASSES = ["red", "green", "blue"]


def make_images(root, count, seed):
    """`count` images per class: noisy squares whose dominant colour is the class."""
    rng = np.random.default_rng(seed)
    lines = []
    for label, _ in enumerate(CLASSES):
        for i in range(count):
            image = rng.integers(0, 80, (40, 48, 3), dtype=np.uint8)
            image[..., 2 - label] = rng.integers(150, 256, (40, 48), dtype=np.uint8)  # BGR
            relative = f"{CLASSES[label]}/{seed}_{i}.png"
            (root / CLASSES[label]).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / relative), image)
            lines.append(f"{relative} {label}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def imagelist_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("imagelist")
    root = work / "images"
    (work / "train.txt").write_text(make_images(root, 40, seed=1))
    (work / "test.txt").write_text(make_images(root, 20, seed=2))
    config = {
        "seed": 3,
        "dataset": {
            "name": "image_list",
            "root": str(root),
            "train_list": str(work / "train.txt"),
            "test_list": str(work / "test.txt"),
            "validation_size": 24,
            "image_size": [32, 32],
            "class_names": CLASSES,
            "augment": True,
        },
        "models": {"mnv2": {"arch": "mobilenet_v2", "alpha": 0.35, "weights": "none"}},
        "train": {
            "batch_size": 16,
            "stages": [{"trainable": "all", "epochs": 3, "learning_rate": 0.003}],
        },
        "tflite": {
            "calibration_images": 32,
            "calibration_sizes": [],
            "calibration_classes": [],
            "float_fallback": [],
        },
        "diagnosis": {"images": 16},  # MobileNetV2's residual graph, PTQ and FAT
        "variants": ["keras-float", "tflite-fp32", "tflite-int8"],
        "adjustable": {"targets": None},
        "evaluate": {"batch_size": 20, "latency_images": 10, "threads": 1},
        "weightquant": {"algorithms": []},
        # FAT on MobileNetV2 (ReLU6, residual Add, image files streamed from disk)
        "fat": {
            "schemes": ["w8a8-sym-pc"],
            "simulate": False,
            "images": 48,
            "validation_images": 24,
            "batch_size": 16,
            "epochs": 1,
            "check_images": 24,
            "calibration": {"batches": 2},
        },
    }
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    run_snakemake(work, cfg, "--cores", "2")
    return work


def test_image_list_pipeline_with_mobilenet_v2(imagelist_run):
    work = imagelist_run
    records = {r["variant"]: r for r in json.loads((work / "results/summary.json").read_text())}
    assert set(records) == {"keras-float", "tflite-fp32", "tflite-int8", "fat-w8a8-sym-pc"}
    for r in records.values():
        assert (r["dataset"], r["model"], r["num_samples"]) == ("image_list", "mnv2", 60)
    assert abs(records["tflite-fp32"]["accuracy"] - records["keras-float"]["accuracy"]) < 0.02
    assert records["tflite-int8"]["input_dtype"] == "int8"
    assert records["fat-w8a8-sym-pc"]["input_dtype"] == "int8"
    check = json.loads((work / "results/image_list/mnv2/fat/w8a8-sym-pc/tflite.json").read_text())
    assert check["check_images"] == 24 and check["top1_agreement"] >= 0.9
    assert "CONV_2D" in check["ops"] and "ADD" in check["ops"]  # MobileNetV2's residuals
    info = json.loads((work / "data/image_list/splits/info.json").read_text())
    assert info["kind"] == "files" and info["input_shape"] == [32, 32, 3]
    assert info["class_names"] == CLASSES and info["sizes"] == {"train": 96, "val": 24, "test": 60}
    md = (work / "results/summary.md").read_text()
    assert "## image_list / mnv2" in md and "| red |" in md


def test_image_list_line_pointing_at_a_missing_file_is_named(tmp_path):
    root = tmp_path / "images"
    text = make_images(root, 2, seed=1)
    (tmp_path / "train.txt").write_text(text + "red/missing.png 0\n")
    (tmp_path / "test.txt").write_text(text)
    config = {
        "dataset": {
            "name": "image_list",
            "root": str(root),
            "train_list": str(tmp_path / "train.txt"),
            "test_list": str(tmp_path / "test.txt"),
            "validation_size": 2,
        },
        "models": {"mnv2": {"arch": "mobilenet_v2", "alpha": 0.35}},
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, cfg, "--cores", "1", check=False)
    assert proc.returncode != 0
    log = (tmp_path / "logs/prepare/image_list.log").read_text()
    assert f"{tmp_path / 'train.txt'}, line 7" in log and "missing.png does not exist" in log

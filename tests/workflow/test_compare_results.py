"""benchmarks/compare_results.py: two tiny fake result trees, equal or changed."""

import importlib.util
import json
import pickle
import pickletools
import re
import shutil
import subprocess
import sys
import zipfile
from fractions import Fraction

import numpy as np
import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "compare_results.py"
_spec = importlib.util.spec_from_file_location("compare_results", SCRIPT)
compare_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_results)

MODEL_DIR = "results/ds/m"
RECORDS = [
    {
        "dataset": "ds",
        "model": "m",
        "variant": "tflite-fp32",
        "accuracy": 0.9123,
        "ms_per_image_b1": 0.41,
        "ms_per_image_batched": 0.05,
        "speed_ratio_b1": 1.0,
        "latency_images": 500,
        "latency_threads": 1,
        "latency_variant": "tflite-fp32",
        "score": float("nan"),
    },
    {
        "dataset": "ds",
        "model": "m",
        "variant": "tflite-int8",
        "accuracy": 0.9087,
        "ms_per_image_b1": 0.22,
        "ms_per_image_batched": 0.02,
        "speed_ratio_b1": 1.86,
        "latency_images": 500,
        "latency_threads": 1,
        "latency_variant": "tflite-int8",
        "score": 0.5,
    },
]


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def edit_json(path, change):
    value = json.loads(path.read_text())
    change(value)
    write_json(path, value)


def rezip(path, change=lambda name, data: data):
    """Rewrite a zip (a .keras file) with other timestamps, passing each member's bytes
    through `change`."""
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(2001, 2, 3, 4, 5, 6)), change(name, data))


def save_model(path, delta=0.0):
    """A tiny Keras model with fixed weights (kernel[1, 2] plus `delta`), saved to `path`."""
    keras = pytest.importorskip("keras")
    model = keras.Sequential(
        [keras.Input((4,), name="x"), keras.layers.Dense(3, name="dense")], name="tiny"
    )
    kernel = np.arange(12, dtype="float32").reshape(4, 3)
    kernel[1, 2] += delta
    model.layers[0].set_weights([kernel, np.ones(3, "float32")])
    model.save(path)


@pytest.fixture(scope="module")
def keras_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "model.keras"
    save_model(path)
    return path


@pytest.fixture
def trees(tmp_path, keras_model_file):
    before = tmp_path / "before"
    write_json(before / "results/summary.json", RECORDS)
    for variant in ("tflite-fp32", "tflite-int8"):
        write_json(before / f"{MODEL_DIR}/eval/{variant}/latency.json", {"ms_per_image_b1": 0.4})
        write_json(before / f"{MODEL_DIR}/eval/{variant}/metrics.json", {"accuracy": 0.9})
    (before / f"{MODEL_DIR}/tflite").mkdir(parents=True)
    (before / f"{MODEL_DIR}/tflite/int8.tflite").write_bytes(bytes(range(256)) * 4)
    weights = {"conv/kernel": np.arange(6, dtype="float32").reshape(2, 3), "bits": [2, 4]}
    (before / f"{MODEL_DIR}/float").mkdir(parents=True)
    (before / f"{MODEL_DIR}/float/weights.pickle").write_bytes(pickle.dumps(weights, protocol=4))
    record = {"__ndarray__": "float32", "shape": [2], "data": np.float32([1, 2]).tobytes()}
    (before / f"{MODEL_DIR}/float/thresholds.pickle").write_bytes(
        pickle.dumps({"alpha": record}, protocol=4)
    )
    shutil.copy(keras_model_file, before / f"{MODEL_DIR}/float/model.keras")
    (before / "results/summary.md").write_text("fastest: 0.22 ms\n")
    after = tmp_path / "after"
    shutil.copytree(before, after)
    return before, after


def run(before, after):
    return compare_results.compare_trees(before, after)


def test_equal_trees_pass(trees, capsys):
    before, after = trees
    assert compare_results.main([str(before), str(after)]) == 0
    record = run(before, after)
    assert record["equal"] and record["differences"] == []
    assert record["counts"]["byte-identical"] == 7
    assert record["counts"]["timing only (exists in both)"] == 2
    assert record["counts"]["not compared"] == 1  # summary.md
    assert "EQUAL" in capsys.readouterr().out


def test_timing_and_environment_changes_are_ignored(trees, tmp_path):
    before, after = trees

    def retime(records):
        for r in records:
            r.update(
                ms_per_image_b1=r["ms_per_image_b1"] * 3, speed_ratio_b1=0.5, latency_threads=2
            )

    edit_json(after / "results/summary.json", retime)
    write_json(after / f"{MODEL_DIR}/eval/tflite-int8/latency.json", {"ms_per_image_b1": 9.9})
    (after / "results/summary.md").write_text("fastest: 0.66 ms\n")
    (after / "results/benchmarks").mkdir()
    (after / "results/benchmarks/train.tsv").write_text("s\n12.5\n")
    out = tmp_path / "out.json"
    assert compare_results.main([str(before), str(after), "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["files"]["equal except timing"] == ["summary.json"]
    assert [e["where"] for e in record["environment"]] == [
        "$[0].latency_threads",
        "$[1].latency_threads",
    ]


def test_changed_accuracy_fails(trees):
    before, after = trees
    edit_json(after / "results/summary.json", lambda records: records[1].update(accuracy=0.9088))
    record = run(before, after)
    assert not record["equal"]
    assert record["files"]["differing"] == ["summary.json"]
    assert "$[1].accuracy: 0.9087 before, 0.9088 after" in record["differences"][0]["first"]


def test_changed_latency_setup_fails(trees):
    before, after = trees
    edit_json(after / "results/summary.json", lambda r: r[0].update(latency_variant="keras"))
    assert not run(before, after)["equal"]


def test_changed_tflite_byte_fails(trees):
    before, after = trees
    path = after / f"{MODEL_DIR}/tflite/int8.tflite"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    record = run(before, after)
    assert record["files"]["differing"] == ["ds/m/tflite/int8.tflite"]
    assert "offset 100" in record["differences"][0]["first"]
    assert compare_results.main([str(before), str(after)]) == 1


def test_pickle_written_differently_is_equal_array_by_array(trees):
    before, after = trees
    weights = {
        "bits": [2, 4],  # other key order, Fortran order, unused memo puts removed
        "conv/kernel": np.asfortranarray(np.arange(6, dtype="float32").reshape(2, 3)),
    }
    path = after / f"{MODEL_DIR}/float/weights.pickle"
    path.write_bytes(pickletools.optimize(pickle.dumps(weights, protocol=4)))
    assert path.read_bytes() != (before / f"{MODEL_DIR}/float/weights.pickle").read_bytes()
    record = run(before, after)
    assert record["equal"]
    assert record["files"]["equal array by array"] == ["ds/m/float/weights.pickle"]


def test_changed_pickle_array_and_foreign_global_fail(trees):
    before, after = trees
    weights = {"conv/kernel": np.arange(6, dtype="float32").reshape(2, 3) * 2, "bits": [2, 4]}
    (after / f"{MODEL_DIR}/float/weights.pickle").write_bytes(pickle.dumps(weights, protocol=4))
    record = {"__ndarray__": "float32", "shape": [2], "data": np.float32([1, 3]).tobytes()}
    (after / f"{MODEL_DIR}/float/thresholds.pickle").write_bytes(
        pickle.dumps({"alpha": record}, protocol=4)
    )
    firsts = {d["file"]: d["first"] for d in run(before, after)["differences"]}
    assert "$.conv/kernel[0, 1]: 1.0 before, 2.0 after" in firsts["ds/m/float/weights.pickle"]
    assert "$.alpha[1]" in firsts["ds/m/float/thresholds.pickle"]
    (after / f"{MODEL_DIR}/float/weights.pickle").write_bytes(pickle.dumps(Fraction(1, 3)))
    firsts = {d["file"]: d["first"] for d in run(before, after)["differences"]}
    assert "global fractions.Fraction refused" in firsts["ds/m/float/weights.pickle"]


def test_keras_saved_twice_is_equal_array_by_array(trees):
    before, after = trees
    path = after / f"{MODEL_DIR}/float/model.keras"
    save_model(path)  # another save: other zip times and date_saved
    # another process: shared_object_id is id() of the object, another number
    rezip(
        path,
        lambda name, data: re.sub(
            rb'"shared_object_id": [0-9]+', b'"shared_object_id": 12345', data
        ),
    )
    assert b"12345" in zipfile.ZipFile(path).read("config.json")
    record = run(before, after)
    assert record["equal"], record["differences"]
    assert record["files"]["equal array by array"] == ["ds/m/float/model.keras"]
    assert record["notes"] == []


def test_keras_module_paths_only_are_noted(trees):
    before, after = trees
    for tree, module in ((before, b"quantflow.quant.layers"), (after, b"quantflow.layers")):
        rezip(
            tree / f"{MODEL_DIR}/float/model.keras",
            lambda name, data: (
                data.replace(b'"module": "keras.layers"', b'"module": "' + module + b'"')
                if name == "config.json"
                else data
            ),
        )
    record = run(before, after)
    assert record["equal"], record["differences"]
    assert record["files"]["equal array by array"] == ["ds/m/float/model.keras"]
    assert record["notes"] == [
        "ds/m/float/model.keras: config.json differs only in " "quantflow module paths"
    ]


def test_changed_keras_weight_or_config_fails(trees, keras_model_file):
    before, after = trees
    path = after / f"{MODEL_DIR}/float/model.keras"
    save_model(path, delta=1e-6)
    first = run(before, after)["differences"][0]
    assert first["file"] == "ds/m/float/model.keras"
    assert "model.weights.h5:layers/dense/vars/0[1, 2]: 5.0 before, 5.00000095" in first["first"]
    shutil.copy(keras_model_file, path)
    rezip(
        path,
        lambda name, data: (
            data.replace(b'"units": 3', b'"units": 4') if name == "config.json" else data
        ),
    )
    assert "config.json.config.layers[1].config.units: 3 before, 4 after" in (
        run(before, after)["differences"][0]["first"]
    )


def test_missing_file_fails(trees):
    before, after = trees
    (after / f"{MODEL_DIR}/eval/tflite-int8/metrics.json").unlink()
    (after / f"{MODEL_DIR}/eval/tflite-int8/latency.json").unlink()
    record = run(before, after)
    assert not record["equal"]
    assert record["files"]["missing"] == [
        "ds/m/eval/tflite-int8/latency.json",
        "ds/m/eval/tflite-int8/metrics.json",
    ]
    assert record["differences"][0]["first"] == "only before"


def test_command_line(trees):
    before, after = trees
    (after / f"{MODEL_DIR}/tflite/int8.tflite").write_bytes(b"other")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(before), str(after)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "DIFFERS ds/m/tflite/int8.tflite" in proc.stdout

"""Compare two quantflow result trees, "before" and "after" a refactor that must change no
result; exit 0 only if they are equal.

    python benchmarks/compare_results.py BEFORE_DIR AFTER_DIR [--json OUT.json]

The layout issue's check: the default config and benchmarks/equality_zoo.yaml (MobileNetV2
from the zoo) each run by the old and the new code in two fresh clones (`snakemake --cores
2 [--configfile ...]`), then this script and benchmarks/load_old_files.py on the two
working directories (results: benchmarks/results/equality_*.json, load_old_*.txt).

Each DIR is a workflow working directory holding results/. Every file under results/ is
compared by its kind (standalone: imports nothing from quantflow):

* .tflite, .packed and any other file: byte-identical (a .csv that differs in bytes is
  compared row by row without its timing columns).
* .pickle: byte-identical, or else loaded with a restricted unpickler (numpy's array
  reconstruction globals only; quantflow's own plain pickles name no global at all, their
  arrays are {"__ndarray__", "shape", "data"} records) and compared array by array.
* .keras (a zip; bytes differ by zip timestamps) and .h5: every weight dataset of
  model.weights.h5 by name, dtype, shape and value. The .keras config.json must be equal
  once its "shared_object_id"s (id() of an object when saved) are renumbered, except that
  "module" strings naming quantflow modules may differ (a refactor moves modules: reported
  as a note); metadata.json (keras version, save date) is not compared.
* .json (summary.json included): equal as JSON after dropping timing keys, floats exactly
  (NaN equals NaN). latency.json files are pure timing: they only have to exist in both.

Timing keys (ignored at any depth; ``TIMING``): any underscore-separated word of the key is
ms, seconds, secs, time, times, timestamp, elapsed, duration or wall, or the key starts with
speed_ratio or speedup, or is created or date_saved. So ms_per_image_b1/_batched,
speed_ratio_b1/_batched, seconds, search_seconds are ignored, while the timing setup
(latency_images, latency_batches, latency_variant, batch_size) must be equal.
Environment keys (``ENV``: a word threads, cores, cpu, cpus, machine, platform or hostname,
or a key ending in _version or named versions: thread counts, cores held, machine and
package versions) are reported separately when they differ and do not fail the check.
No JSON text field embeds a timing (the verdict's "fastest" sentence lives only in the
rendered summary.md), so strings are compared exactly.

Not compared (counted): results/benchmarks/ (Snakemake timings), logs/, .snakemake*,
the rendered summary.md, summary.html, report_front.html and .png/.svg plots.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import pickle
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

TIMING = re.compile(
    r"(^|_)(ms|seconds|secs|time|times|timestamp|elapsed|duration|wall)(_|$)"
    r"|^speed_?ratio|^speedup|^(created|date_saved)$"
)
ENV = re.compile(
    r"(^|_)(threads|cores|cpu|cpus|machine|platform|hostname)(_|$)|_version$|^versions$"
)
SKIP_PARTS = {"benchmarks", "logs", ".snakemake"}
SKIP_NAMES = {"summary.md", "summary.html", "report_front.html"}
SKIP_SUFFIXES = {".png", ".svg"}
NUMPY_GLOBALS = {
    (f"numpy{core}.multiarray", name)
    for core in (".core", "._core")
    for name in ("_reconstruct", "scalar")
}
NUMPY_GLOBALS |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
CATEGORIES = (
    "byte-identical",
    "equal array by array",
    "equal except timing",
    "timing only (exists in both)",
    "differing",
    "missing",
    "not compared",
)


class Diff(Exception):
    """The first difference found in a file."""


class NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} refused")
        return super().find_class(module, name)


def compare_values(a, b, where, env):
    """Raise Diff at the first difference of two JSON/pickle trees; timing keys are
    skipped, environment keys differing are appended to `env`."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            raise Diff(
                f"{where}: keys only before {sorted(map(str, a.keys() - b.keys()))}, "
                f"only after {sorted(map(str, b.keys() - a.keys()))}"
            )
        for key in a:
            name = str(key)
            if TIMING.search(name):
                continue
            try:
                compare_values(a[key], b[key], f"{where}.{name}", env)
            except Diff:
                if not ENV.search(name):
                    raise
                env.append({"where": f"{where}.{name}", "before": a[key], "after": b[key]})
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and type(a) is type(b):
        if len(a) != len(b):
            raise Diff(f"{where}: {len(a)} items before, {len(b)} after")
        for i, (x, y) in enumerate(zip(a, b)):
            compare_values(x, y, f"{where}[{i}]", env)
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        compare_arrays(a, b, where)
    elif type(a) is not type(b):
        raise Diff(f"{where}: {type(a).__name__} {a!r} before, {type(b).__name__} {b!r} after")
    elif not (a == b or (a != a and b != b)):  # NaN equals NaN
        raise Diff(f"{where}: {_short(a)} before, {_short(b)} after")


def compare_arrays(a, b, where):
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        raise Diff(f"{where}: an array on one side only")
    if a.dtype != b.dtype or a.shape != b.shape:
        raise Diff(f"{where}: {a.dtype}{list(a.shape)} before, {b.dtype}{list(b.shape)} after")
    nan = a.dtype.kind in "fc"
    if not np.array_equal(a, b, equal_nan=nan):
        diff = (a != b) & ~(np.isnan(a) & np.isnan(b)) if nan else a != b
        index = tuple(int(i) for i in np.argwhere(diff)[0])
        raise Diff(
            f"{where}{list(index)}: {a[index].tolist()!r} before, {b[index].tolist()!r} after "
            f"({int(diff.sum())} of {a.size} values differ)"
        )


def _short(value):
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def decode_records(obj):
    """Turn quantflow's plain array records back into arrays (for array-wise reports)."""
    if isinstance(obj, dict) and set(obj) == {"__ndarray__", "shape", "data"}:
        dtype = np.dtype(obj["__ndarray__"]).newbyteorder("<")
        return np.frombuffer(obj["data"], dtype).reshape(obj["shape"])
    if isinstance(obj, dict):
        return {k: decode_records(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(decode_records(v) for v in obj)
    return obj


def h5_arrays(source):
    """{dataset path: array} of an HDF5 file (a path or bytes)."""
    import h5py

    out = {}
    with h5py.File(io.BytesIO(source) if isinstance(source, bytes) else source, "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return out


def compare_h5(a, b, where):
    wa, wb = h5_arrays(a), h5_arrays(b)
    if wa.keys() != wb.keys():
        raise Diff(
            f"{where}: datasets only before {sorted(wa.keys() - wb.keys())[:5]}, "
            f"only after {sorted(wb.keys() - wa.keys())[:5]}"
        )
    for name in sorted(wa):
        compare_arrays(np.asarray(wa[name]), np.asarray(wb[name]), f"{where}:{name}")


def canonical(obj, ids, modules):
    """A Keras config with its "shared_object_id"s (id() of an object at save time)
    renumbered in order of appearance and, if `modules`, quantflow module paths masked."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "shared_object_id":
                v = ids.setdefault(v, len(ids))
            elif (
                k == "module" and modules and isinstance(v, str) and v.split(".")[0] == "quantflow"
            ):
                v = "<quantflow module>"
            out[k] = canonical(v, ids, modules)
        return out
    return [canonical(v, ids, modules) for v in obj] if isinstance(obj, list) else obj


def compare_keras(a, b, notes, rel):
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        names = set(za.namelist()) - {"metadata.json"}
        if names != set(zb.namelist()) - {"metadata.json"}:
            raise Diff(f"zip members {sorted(names)} before, {sorted(zb.namelist())} after")
        for name in sorted(names, key=lambda n: (not n.endswith(".h5"), n)):  # weights first
            da, db = za.read(name), zb.read(name)
            if name.endswith(".h5"):
                compare_h5(da, db, name)
            elif name == "config.json" and da != db:
                ca, cb = json.loads(da), json.loads(db)
                if canonical(ca, {}, False) != canonical(cb, {}, False):
                    compare_values(canonical(ca, {}, True), canonical(cb, {}, True), name, [])
                    notes.append(f"{rel}: config.json differs only in quantflow module paths")
            elif da != db:
                raise Diff(f"zip member {name} differs")


def compare_csv(a, b):
    ra, rb = (list(csv.DictReader(io.StringIO(p.read_text()))) for p in (a, b))

    def strip(rows):
        return [{k: v for k, v in r.items() if not TIMING.search(k)} for r in rows]

    compare_values(strip(ra), strip(rb), "rows", [])


def compare_file(a: Path, b: Path, rel: str, env: list, notes: list) -> str:
    """The category of one file present in both trees; raises Diff if it differs."""
    if a.name == "latency.json":
        return "timing only (exists in both)"
    if a.read_bytes() == b.read_bytes():
        return "byte-identical"
    suffix = a.suffix
    if suffix == ".json":
        found = []
        compare_values(json.loads(a.read_text()), json.loads(b.read_text()), "$", found)
        env.extend({"file": rel, **e} for e in found)
        return "equal except timing"
    if suffix == ".pickle":

        def load(p):
            return decode_records(NumpyUnpickler(io.BytesIO(p.read_bytes())).load())

        compare_values(load(a), load(b), "$", [])
        return "equal array by array"
    if suffix in (".keras", ".h5"):
        compare_keras(a, b, notes, rel) if suffix == ".keras" else compare_h5(a, b, "")
        return "equal array by array"
    if suffix == ".csv":
        compare_csv(a, b)
        return "equal except timing"
    da, db = a.read_bytes(), b.read_bytes()
    first = next((i for i, (x, y) in enumerate(zip(da, db)) if x != y), min(len(da), len(db)))
    raise Diff(f"bytes differ from offset {first} ({len(da)} bytes before, {len(db)} after)")


def skipped(rel: Path) -> bool:
    return (
        bool(SKIP_PARTS & set(rel.parts[:-1]))
        or rel.name in SKIP_NAMES
        or rel.name.startswith(".snakemake")
        or rel.suffix in SKIP_SUFFIXES
    )


def compare_trees(before: Path, after: Path) -> dict:
    roots = [Path(before) / "results", Path(after) / "results"]
    for root in roots:
        if not root.is_dir():
            raise SystemExit(f"error: {root} is not a directory")
    trees = [{p.relative_to(r): p for p in r.rglob("*") if p.is_file()} for r in roots]
    files = {c: [] for c in CATEGORIES}
    differences, env, notes = [], [], []
    for rel in sorted(trees[0].keys() | trees[1].keys()):
        if skipped(rel):
            files["not compared"].append(str(rel))
        elif rel not in trees[0] or rel not in trees[1]:
            files["missing"].append(str(rel))
            differences.append(
                {
                    "file": str(rel),
                    "first": "only " + ("after" if rel not in trees[0] else "before"),
                }
            )
        else:
            try:
                files[compare_file(trees[0][rel], trees[1][rel], str(rel), env, notes)].append(
                    str(rel)
                )
            except Exception as e:  # a Diff, or unreadable: a difference too, with the reason
                files["differing"].append(str(rel))
                differences.append(
                    {
                        "file": str(rel),
                        "first": str(e) if isinstance(e, Diff) else f"{type(e).__name__}: {e}",
                    }
                )
    return {
        "before": str(before),
        "after": str(after),
        "equal": not differences,
        "counts": {c: len(v) for c, v in files.items()},
        "files": files,
        "differences": differences,
        "environment": env,
        "notes": notes,
        "timing_rule": TIMING.pattern,
        "environment_rule": ENV.pattern,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--json", type=Path, help="write the comparison as a JSON record")
    args = parser.parse_args(argv)
    record = compare_trees(args.before, args.after)
    print(
        f"{args.before}/results vs {args.after}/results: "
        + ("EQUAL" if record["equal"] else "DIFFERENT")
    )
    for category, count in record["counts"].items():
        print(f"  {category:30} {count}")
    for d in record["differences"]:
        print(f"  DIFFERS {d['file']}: {d['first']}")
    for e in record["environment"]:
        print(f"  environment {e['file']} {e['where']}: {e['before']!r} -> {e['after']!r}")
    for note in record["notes"]:
        print(f"  note: {note}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2, default=repr) + "\n")
    return 0 if record["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())

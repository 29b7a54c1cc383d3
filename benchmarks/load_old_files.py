"""Files written by an older quantflow still load with this one, and mean the same.

    python benchmarks/load_old_files.py OLD_DIR NEW_DIR

OLD_DIR and NEW_DIR are working directories of the same config run by the old and the new
code (see benchmarks/compare_results.py, which checks their bytes). Here every fake-quant
.keras model, thresholds.pickle, weights.pickle and weights.packed under OLD_DIR/results is
loaded with the current library and run (or read) next to the NEW_DIR file of the same
path: the outputs on a fixed batch of images (models), the records (pickles) and the
dequantized weights (packed files) must be equal. Prints one line
per file; exits 1 on any difference or load failure.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(old_dir: str, new_dir: str) -> int:
    import keras

    import quantflow.quant.layers  # noqa: F401 (registers the fake-quant layers)
    from quantflow.formats.bitpack import load_packed
    from quantflow.formats.weights import load_weights, rebuild_model
    from quantflow.quant.fat.thresholds import load_thresholds

    old, new = Path(old_dir) / "results", Path(new_dir) / "results"
    rng = np.random.default_rng(0)
    failures = 0
    for path in sorted(old.rglob("*")):
        rel = path.relative_to(old)
        other = new / rel
        try:
            if path.suffix == ".keras" and path.parent.name != "float":
                a = keras.saving.load_model(path, compile=False)
                b = keras.saving.load_model(other, compile=False)
                x = np.round(rng.uniform(0, 255, (16, *a.input_shape[1:]))).astype(np.float32)
                same = np.array_equal(np.asarray(a(x)), np.asarray(b(x)))
            elif path.name == "thresholds.pickle":
                a, b = load_thresholds(path), load_thresholds(other)
                same = repr(a) == repr(b)
            elif path.name == "weights.pickle":
                a, b = load_weights(path), load_weights(other)
                model = rebuild_model(a)
                x = np.round(rng.uniform(0, 255, (4, *model.input_shape[1:]))).astype(np.float32)
                same = np.array_equal(np.asarray(model(x)), np.asarray(rebuild_model(b)(x)))
            elif path.name == "weights.packed":
                a, b = load_packed(path), load_packed(other)
                same = a.meta == b.meta and sorted(a.tensors) == sorted(b.tensors)
                same = same and all(np.array_equal(a.weights(n), b.weights(n)) for n in a.tensors)
                same = same and all(np.array_equal(a.arrays[n], b.arrays[n]) for n in a.arrays)
            else:
                continue
        except Exception as e:  # a file the new code cannot load is the failure sought
            print(f"FAILED {rel}: {type(e).__name__}: {e}")
            failures += 1
            continue
        print(f"{'same' if same else 'DIFFERENT'} {rel}")
        failures += not same
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))

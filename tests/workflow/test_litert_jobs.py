"""Jobs that only run a TFLite model (evaluate, latency, diagnose) never import TensorFlow:
its import alone takes about 3 s, paid by every such job of a run."""

import subprocess
import sys
import textwrap

import numpy as np

from conftest import REPO


def test_litert_jobs_do_not_import_tensorflow(tmp_path):
    import keras
    import tensorflow as tf

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "m.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "test.npz",
        images=rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8),
        labels=rng.integers(0, 3, 40),
    )
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from quantflow.data.splits import Split
        from quantflow.evaluate.diagnosis import diagnose
        from quantflow.evaluate.accuracy import evaluate_model
        from quantflow.evaluate.latency import measure_latency
        split = Split({str(tmp_path / 'test.npz')!r})
        model = {str(path)!r}
        record = evaluate_model(model, split, 3, batch_size=16, threads=1)
        timing = measure_latency(model, split, batch_size=16, latency_images=10,
                                 latency_batches=2, threads=1)
        report = diagnose(model, model, split.take(np.arange(8)), threads=1)
        assert 0 <= record["accuracy"] <= 1 and timing["ms_per_image_b1"] > 0
        assert report["layers"], report
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        print("LOADED", loaded)
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED []" in out.stdout, out.stdout[-2000:]

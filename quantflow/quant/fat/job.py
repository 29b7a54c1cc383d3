"""One FAT job, from files to files (the workflow's `fat` rule runs it): load the float
model and the splits, build the scheme's fake-quant model, calibrate it, train its
thresholds with checkpoints, and write the trained model, thresholds, history and summary.

    run(FatFiles(model=..., train=..., val=..., info=...), FatOutputs(...), "w8a8-sym-pc",
        cfg, seed=42, threads=1)

`cfg` is the config's `fat:` section (images, validation_images, batch_size, epochs,
learning_rate, reset_every, loss, reset, calibration). Threads are the caller's to set.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from quantflow.errors import QuantflowError


@dataclass
class FatFiles:
    """The inputs: the float .keras model, the train / val splits and their info.json."""

    model: str
    train: str
    val: str
    info: str


@dataclass
class FatOutputs:
    """The outputs: checkpoint directories (last, best), thresholds.pickle, the trained
    fake-quant model.keras, history.csv and the summary (fat.json)."""

    ckpt: str
    best_ckpt: str
    thresholds: str
    model: str
    history: str
    summary: str

    @classmethod
    def under(cls, directory: str | Path) -> "FatOutputs":
        """The workflow's file names under one scheme's directory."""
        d = Path(directory)
        return cls(
            str(d / "ckpt"),
            str(d / "best_ckpt"),
            str(d / "thresholds.pickle"),
            str(d / "model.keras"),
            str(d / "history.csv"),
            str(d / "fat.json"),
        )


def run(
    inp: FatFiles,
    out: FatOutputs,
    scheme_name: str,
    cfg: dict,
    seed: int,
    threads: int | None = None,
    model_name: str | None = None,
    strategy=None,
) -> dict:
    """Train one scheme's thresholds and write `out`; returns the summary (fat.json).
    `strategy`: the job's tf.distribute strategy (quantflow.distribute; None: the default):
    the models are built under it, and only its chief writes files."""
    from quantflow.distribute.resume import ResumeState, fingerprint_files
    from quantflow.distribute.strategy import is_chief, replicas, scope, worker_failures
    import numpy as np

    from quantflow.data.splits import Split, read_info
    from quantflow.models.custom import load_keras
    from quantflow.quant.calibrate import calibrate, thresholds
    from quantflow.quant.fat.thresholds import alpha_values, save_thresholds
    from quantflow.quant.fat.train import logits_rmse, train_thresholds
    from quantflow.quant.lowering import island_layers
    from quantflow.quant.packed import packed_size_bytes
    from quantflow.quant.schemes import parse_scheme
    from quantflow.quant.transform import fake_quant_model

    scheme = parse_scheme(scheme_name)
    size = read_info(inp.info)["input_shape"][:2]
    chief = is_chief(strategy)
    with scope(strategy):
        model = load_keras(inp.model, model_name)  # model_name: the config entry, for messages
    train, val = Split(inp.train, size), Split(inp.val, size)
    rng = np.random.default_rng(seed)
    images = train.take(np.sort(rng.permutation(len(train))[: cfg["images"]]))
    held_out = val.take(np.sort(rng.permutation(len(val))[: cfg["validation_images"]]))
    batch = cfg["batch_size"]
    print(
        f"scheme {scheme_name}: {scheme}; {len(images)} unlabelled training images, "
        f"{len(held_out)} held-out validation images, batch {batch}"
    )

    with scope(strategy):
        qmodel = fake_quant_model(model, **scheme)
    islands = island_layers(qmodel)
    for island in islands:
        print(
            f"WARNING: layer {island['layer']!r} ({island['class']}) has no int8 form: it "
            "stays float (a float island, dequantized before and quantized after)"
        )
    calibration = cfg["calibration"]
    calibrate(
        qmodel,
        images,
        calibration["batches"],
        method=calibration["method"],
        percentile=calibration["percentile"],
        batch_size=batch,
    )
    initial = thresholds(qmodel)
    print(
        f"calibrated {len(initial)} quantizers on {calibration['batches']} batches "
        f"({calibration['method']}); activation ranges:"
    )
    for name, row in initial.items():
        if row["kind"] == "activation":
            print(
                f"  {name}: [{row['range'][0]:.4g}, {row['range'][1]:.4g}]"
                f"{' (fixed)' if row['fixed'] else ''}"
            )

    for path in (out.ckpt, out.best_ckpt):
        Path(path).mkdir(parents=True, exist_ok=True)

    def save_checkpoint(path, row):
        qmodel.save_weights(str(Path(path) / "model.weights.h5"))
        (Path(path) / "state.json").write_text(json.dumps(row, indent=2) + "\n")

    def checkpoint(row, improved):
        if chief:
            for path in [out.ckpt] + ([out.best_ckpt] if improved else []):
                save_checkpoint(path, row)

    resume = ResumeState(
        resume_dir(out),
        {
            "job": "fat",
            "scheme": scheme_name,
            "cfg": cfg,
            "seed": seed,
            "inputs": fingerprint_files(inp.model, inp.train, inp.val, inp.info),
        },
        write=chief,
    )
    start = time.perf_counter()
    with worker_failures(strategy, f"it resumes from the last epoch saved in {resume.path}"):
        result = train_thresholds(
            model,
            qmodel,
            images,
            epochs=cfg["epochs"],
            learning_rate=cfg["learning_rate"],
            reset_every=cfg["reset_every"],
            val_ds=held_out,
            batch_size=batch,
            seed=seed,
            on_epoch=checkpoint,
            log_stream=sys.stderr,
            loss=cfg["loss"],
            reset=cfg["reset"],
            strategy=strategy,
            resume=resume,
        )
    seconds = time.perf_counter() - start
    if not chief:  # a multi-worker job's other workers: trained along, write nothing
        return result
    # the kept thresholds (train_thresholds restored them), saved and read back
    best_row = ([{"epoch": 0}] + result["history"])[result["best_epoch"]]
    save_checkpoint(out.best_ckpt, best_row)
    qmodel.load_weights(str(Path(out.best_ckpt) / "model.weights.h5"))
    final = logits_rmse(model, qmodel, held_out, batch_size=batch)
    if abs(final - result["final_val_rmse"]) > 1e-5 * max(final, 1e-9):
        raise QuantflowError(
            f"{out.best_ckpt}: the kept thresholds give held-out RMSE {final:.6g}, not the "
            f"{result['final_val_rmse']:.6g} recorded when they were saved; rerun the fat rule"
        )
    qmodel.save(out.model)
    trained = thresholds(qmodel)
    save_thresholds(
        out.thresholds, {"scheme": scheme_name, **scheme, "initial": initial, "trained": trained}
    )
    with open(out.history, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "train_rmse", "val_rmse", "learning_rate"])
        writer.writeheader()
        writer.writerow(
            {
                "epoch": 0,
                "train_rmse": "",
                "val_rmse": result["initial_val_rmse"],
                "learning_rate": "",
            }
        )
        writer.writerows(result["history"])
    alphas = alpha_values(trained)
    summary = {
        "scheme": scheme_name,
        **scheme,
        "images": len(images),
        "validation_images": len(held_out),
        "batch_size": batch,
        "epochs": cfg["epochs"],
        "steps": result["steps"],
        "learning_rate": cfg["learning_rate"],
        "reset_every": cfg["reset_every"],
        "loss": cfg["loss"],
        "reset": cfg["reset"],
        "calibration": calibration,
        "seconds": seconds,
        "threads": threads,
        "initial_val_rmse": result["initial_val_rmse"],
        "final_val_rmse": result["final_val_rmse"],
        "best_epoch": result["best_epoch"],
        "packed_size_bytes": packed_size_bytes(qmodel),
        "float_islands": islands,
        "replicas": replicas(strategy),
        "alphas": {kind: _stats(v) for kind, v in alphas.items()},
    }
    Path(out.summary).write_text(json.dumps(summary, indent=2) + "\n")
    resume.clear()
    print(
        f"threshold training {seconds:.1f} s: held-out RMSE {result['initial_val_rmse']:.5f} "
        f"-> {result['final_val_rmse']:.5f} (epoch {result['best_epoch']} kept)"
    )
    return summary


def resume_dir(out: FatOutputs) -> Path:
    """Where a FAT job keeps its resume state (quantflow.distribute.resume): beside its
    outputs, not one of them (a failed job's outputs are deleted before it reruns)."""
    return Path(out.summary).parent / ".resume"


def _stats(values):
    import numpy as np

    if values.size == 0:
        return {"count": 0}
    return {
        "count": int(values.size),
        "min": float(values.min()),
        "median": float(np.median(values)),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "at_lower_bound": float(np.mean(values <= 0.5 + 1e-6)),
        "below_one": float(np.mean(values < 1 - 1e-6)),
    }

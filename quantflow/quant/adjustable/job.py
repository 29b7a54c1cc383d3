"""One adjustable target's job, from files to files (the workflow's `adjustable` rule runs
it): build the adjustable fake-quant model, start its ranges from calibration or FAT's
thresholds, search per-channel ranges and bit widths under the MicroNet score with
checkpoints, and write the model, its bits and exact score, the packed weights, history
and summary.

    run(AdjustableFiles(model=..., train=..., val=..., info=..., fat_thresholds=None),
        AdjustableOutputs(...), "s24", target_settings, seed=42, threads=1)

`target_settings` is the target's settings dict (Settings.from_dict). Threads are the caller's.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class AdjustableFiles:
    """The inputs: the float .keras model, the train / val splits, their info.json and,
    optionally, FAT's thresholds.pickle to start the ranges from."""

    model: str
    train: str
    val: str
    info: str
    fat_thresholds: str | None = None


@dataclass
class AdjustableOutputs:
    """The outputs (the workflow's names under adjustable/<target>/)."""

    ckpt: str
    best_ckpt: str
    model: str
    quant_info: str
    score: str
    model_info: str
    initial_thresholds: str
    history: str
    packed: str
    summary: str

    @classmethod
    def under(cls, directory: str | Path) -> "AdjustableOutputs":
        d = Path(directory)
        return cls(
            str(d / "ckpt"),
            str(d / "best_ckpt"),
            str(d / "model.keras"),
            str(d / "quant_info.json"),
            str(d / "score.json"),
            str(d / "model_info.json"),
            str(d / "initial_thresholds.json"),
            str(d / "history.csv"),
            str(d / "weights.packed"),
            str(d / "adjustable.json"),
        )


def run(
    inp: AdjustableFiles,
    out: AdjustableOutputs,
    target: str,
    target_settings: dict,
    seed: int,
    threads: int | None = None,
    model_name: str | None = None,
    strategy=None,
) -> dict:
    """Search one target and write `out`; returns the summary (adjustable.json).
    `strategy`: the job's tf.distribute strategy (quantflow.distribute; None: the default):
    the models are built under it, and only its chief writes files."""
    from quantflow.distribute.resume import ResumeState, fingerprint_files
    from quantflow.distribute.strategy import is_chief, replicas, scope, worker_failures
    import numpy as np

    from quantflow.data.splits import Split, read_info
    from quantflow.models.custom import load_keras
    from quantflow.formats import bitpack
    from quantflow.quant.adjustable import train as search
    from quantflow.quant.adjustable.export import packed_weights
    from quantflow.quant.adjustable.score import ScoreGraph, bit_summary, score_from_quant_info
    from quantflow.quant.adjustable.settings import Settings, build_model, calibrate, init_from_fat
    from quantflow.quant.calibrate import thresholds
    from quantflow.quant.micronet.count import count_model
    from quantflow.quant.micronet.score import SUMMARY_KEYS, reference_counts

    settings = Settings.from_dict(target_settings)
    chief = is_chief(strategy)
    with scope(strategy):
        float_model = load_keras(inp.model, model_name)  # the config entry, for messages
    size = read_info(inp.info)["input_shape"][:2]
    train, val = Split(inp.train, size), Split(inp.val, size)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(train))[: settings.images])
    vidx = np.sort(rng.permutation(len(val))[: settings.validation_images])
    split = {
        "images": train.take(idx),
        "labels": train.labels[idx],
        "val_images": val.take(vidx),
        "val_labels": val.labels[vidx],
    }
    print(
        f"target {target}: {len(idx)} labelled training images, {len(vidx)} held-out "
        f"validation images; settings {json.dumps(settings.to_dict())}"
    )

    with scope(strategy):
        model = build_model(float_model, settings)
    calibrate(model, split["images"], settings, batch_size=settings.batch_size)
    init = {"from": "calibration"}
    if inp.fat_thresholds:
        from quantflow.quant.fat.thresholds import load_thresholds

        fat = load_thresholds(inp.fat_thresholds)
        init = {"from": f"fat {fat['scheme']}", **init_from_fat(model, fat["trained"])}
    print(f"initial ranges: {init}")
    if chief:
        _write_json(out.initial_thresholds, {"init": init, "quantizers": thresholds(model)})
    counts = count_model(float_model)
    graph = ScoreGraph(model, counts, reference=settings.reference)
    if graph.unmatched:
        print(f"kept at a constant width (no adjustable quantizer found): {graph.unmatched}")
    own = reference_counts(counts)  # the float model's 32-bit totals
    if chief:
        _write_json(
            out.model_info,
            {
                "model": float_model.name,
                "reference": settings.reference,
                "p_ref": graph.p_ref,
                "f_ref": graph.f_ref,
                "parameter_count": int(own["p_ref"]),
                "operation_count": int(own["f_ref"]),
                "layers": [c.to_dict() for c in counts],
            },
        )

    for path in (out.ckpt, out.best_ckpt):
        Path(path).mkdir(parents=True, exist_ok=True)

    def checkpoint(row, best):
        if not chief:
            return
        for path in [out.ckpt] + ([out.best_ckpt] if best else []):
            model.save_weights(str(Path(path) / "model.weights.h5"))
            _write_json(Path(path) / "state.json", row)

    inputs = [inp.model, inp.train, inp.val, inp.info, inp.fat_thresholds]
    resume = ResumeState(
        resume_dir(out),
        {
            "job": "adjustable",
            "target": target,
            "settings": settings.to_dict(),
            "seed": seed,
            "inputs": fingerprint_files(*[p for p in inputs if p]),
        },
        write=chief,
    )
    start = time.perf_counter()
    with worker_failures(strategy, f"it resumes after the mini-epoch saved in {resume.path}"):
        result = search.train(
            float_model,
            model,
            graph,
            split,
            settings,
            seed=seed,
            on_checkpoint=checkpoint,
            log=lambda line: print(line, flush=True),
            strategy=strategy,
            resume=resume,
        )
    seconds = time.perf_counter() - start
    if not chief:  # a multi-worker job's other workers: trained along, write nothing
        return result
    best_state = json.loads((Path(out.best_ckpt) / "state.json").read_text())
    if best_state["mini_epoch"] != result["best"]["mini_epoch"]:
        raise RuntimeError(
            f"{out.best_ckpt} holds mini-epoch {best_state['mini_epoch']}, "
            f"not the best ({result['best']['mini_epoch']})"
        )

    model.save(out.model)
    info = graph.quant_info()
    exact = score_from_quant_info(info, counts)
    score = {k: exact[k] for k in SUMMARY_KEYS}
    _write_json(out.quant_info, {**info, "score": score})
    _write_json(out.score, score)
    with open(out.history, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result["history"][-1]))
        writer.writeheader()
        writer.writerows(
            {"epoch": 0, **row} if "epoch" not in row else row for row in result["history"]
        )
    packed = packed_weights(model, {"model": float_model.name, "target": target})
    bitpack.save_packed(out.packed, packed)
    storage = bitpack.file_storage(out.packed, packed)
    # the payload is the kernels' storage as the score counts it, bit for bit
    by_name = {c.name: c for c in counts}
    storage["score_kernel_bits"] = int(
        sum(
            sum(row["bits"]) * by_name[name].weights_per_channel
            for name, row in info["weights"].items()
            if row["layer"] is not None
        )
    )
    if storage["score_kernel_bits"] != storage["payload_bits"]:
        raise RuntimeError(
            f"{out.packed}: {storage['payload_bits']} payload bits, but the "
            f"score counts {storage['score_kernel_bits']} kernel bits"
        )
    summary = {
        "target": target,
        "settings": settings.to_dict(),
        "init": init,
        "images": len(idx),
        "validation_images": len(vidx),
        "float_val_accuracy": result["float_accuracy"],
        "val_accuracy": result["final_accuracy"],
        "best": result["best"],
        "swa": result["swa"],
        "score": score,
        "bits": bit_summary(info),
        "packed": storage,
        "unmatched": graph.unmatched,
        "steps": result["steps"],
        "seconds": seconds,
        "threads": threads,
        "replicas": replicas(strategy),
    }
    _write_json(out.summary, summary)
    resume.clear()
    print(
        f"target {target}: score {score['score']:.4f} (parameters "
        f"{score['parameter_score']:.4f} + operations {score['operation_score']:.4f}), "
        f"mean bits weights {score['mean_weight_bits']:.2f} activations "
        f"{score['mean_activation_bits']:.2f}; held-out top-1 "
        f"{100 * result['final_accuracy']:.2f}% (float {100 * result['float_accuracy']:.2f}%);"
        f" packed weights {storage['file_bytes']} bytes; {seconds:.0f} s"
    )
    return summary


def resume_dir(out: AdjustableOutputs) -> Path:
    """Where an adjustable job keeps its resume state (quantflow.distribute.resume): beside
    its outputs, not one of them (a failed job's outputs are deleted before it reruns)."""
    return Path(out.summary).parent / ".resume"


def _write_json(path, value) -> None:
    Path(path).write_text(json.dumps(value, indent=2) + "\n")

"""train: build (or load) the model, train it in stages, keep the best epoch on validation,
save .keras + history."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.workers import run_logged_workers
from quantflow.workflow.threads import configure_threads


def main(inp, out, spec, cfg, seed, augment, threads, custom, distribute):
    configure_threads(threads, seed)
    from quantflow.distribute import strategy as dist

    dist.configure_devices(distribute)
    strategy = dist.make_strategy(distribute)
    print(f"training on {dist.describe(strategy)}")
    from quantflow.models.custom import use_custom_code

    use_custom_code(custom)
    from quantflow.data import splits as data
    from quantflow.models.finetune import fine_tune, restore_weights
    from quantflow.data.stream import pipeline_errors
    from quantflow.models.health import batchnorm_momentum, float_model_check, momenta
    from quantflow.models.keras_apps import BN_MOMENTUM
    from quantflow.models.registry import USER_FILES, model_from_spec
    from quantflow.models.callbacks import inference_copy, write_history_csv

    info = data.read_info(inp.info)
    size = info["input_shape"][:2]
    with strategy.scope():  # the model's variables, mirrored when there are replicas
        model = model_from_spec(
            spec, info["input_shape"], info["num_classes"], name=custom["model"]
        )
    if cfg.get("batchnorm_momentum") is not None:
        changed = batchnorm_momentum(model, cfg["batchnorm_momentum"])
        print(f"train.batchnorm_momentum {cfg['batchnorm_momentum']}: {len(changed)} layer(s)")
    elif spec["arch"] in USER_FILES:  # the zoo's cap, applied to the user's model
        changed = batchnorm_momentum(model, cap=BN_MOMENTUM)
        if changed:
            print(
                f"BatchNorm momentum capped at {BN_MOMENTUM} (as the zoo models; set "
                f"train.batchnorm_momentum to choose): {'; '.join(changed)}"
            )
    if cfg.get("checkpoint"):
        restored, skipped = restore_weights(model, cfg["checkpoint"], cfg.get("exclude", []))
        print(f"restored {len(restored)} layers from {cfg['checkpoint']}; kept {skipped} as built")
    model.summary(print_fn=print)
    train = data.Split(inp.train, size).batches(
        cfg["batch_size"], shuffle=True, seed=seed, augment=augment
    )
    val = data.Split(inp.val, size).batches(max(cfg["batch_size"], 256))
    with pipeline_errors():
        result = fine_tune(
            model, train, val, stages=cfg["stages"], log_stream=sys.stderr, strategy=strategy
        )
    result["replicas"] = dist.replicas(strategy)
    if not dist.is_chief(strategy):  # a multi-worker job's other workers write nothing
        return
    inference_copy(model).save(out.model)
    write_history_csv(out.history, result["history"])
    result.update(
        params=int(model.count_params()),
        epochs_run=len(result["history"]),
        best_epoch=len(result["history"][: _best_row(result)]) + 1,
        best_val_accuracy=result["best"]["val_accuracy"],
        arch=spec["arch"],
        threads=threads,
    )
    # is it worth comparing anything against? (warned here, shown in the report)
    result["check"] = float_model_check(
        result["history"][_best_row(result)],
        info["num_classes"],
        momenta(model),
        result["epochs_run"],
    )
    if result["check"]["warning"]:
        print(f"WARNING: {result['check']['warning']}", file=sys.stderr)
    Path(out.summary).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(
        f"best epoch {result['best_epoch']}: validation accuracy "
        f"{result['best_val_accuracy']:.4f} ({result['seconds']:.0f} s)"
    )


def _best_row(result) -> int:
    """Index, over all stages, of the epoch whose weights were kept."""
    best = result["best"]
    return next(
        i
        for i, row in enumerate(result["history"])
        if (row["stage"], row["epoch"]) == (best["stage"], best["epoch"])
    )


run_logged_workers(
    snakemake.log[0],
    dict(snakemake.resources.items()),  # mpi and tasks: one worker per SLURM task
    snakemake.threads,
    main,
    snakemake.input,
    snakemake.output,
    snakemake.params.spec,
    snakemake.params.train,
    snakemake.params.seed,
    snakemake.params.augment,
    snakemake.threads,
    snakemake.params.custom,
    snakemake.config.get("distribute"),  # how it runs, not what it computes: not a param
)

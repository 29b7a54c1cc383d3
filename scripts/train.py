"""train: fit the float model, keep the best epoch on validation, save .keras + history."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.logs import run_logged
from quantflow.runtime import configure_threads


def main(inp, out, spec, cfg, seed, threads):
    configure_threads(threads, seed)
    from quantflow import data
    from quantflow.models import build_model
    from quantflow.train import inference_copy, train_classifier, write_history_csv

    info = data.read_info(inp.info)
    x, y = data.load_split(inp.train)
    xv, yv = data.load_split(inp.val)
    options = {k: v for k, v in spec.items() if k != "arch"}
    model = build_model(spec["arch"], info["input_shape"], info["num_classes"], **options)
    model.summary(print_fn=print)
    result = train_classifier(
        model, (data.preprocess(x), y), (data.preprocess(xv), yv),
        epochs=cfg["epochs"], batch_size=cfg["batch_size"], learning_rate=cfg["learning_rate"],
        warmup_steps=cfg["warmup_steps"], label_smoothing=cfg["label_smoothing"], seed=seed,
    )
    inference_copy(model).save(out.model)
    write_history_csv(out.history, result["history"])
    result.update(params=int(model.count_params()), epochs_run=len(result["history"]),
                  arch=spec["arch"], threads=threads)
    Path(out.summary).write_text(json.dumps(result, indent=2) + "\n")
    print(f"best epoch {result['best_epoch']}: validation accuracy {result['best_val_accuracy']:.4f}"
          f" ({result['seconds']:.0f} s)")


run_logged(
    snakemake.log[0], main, snakemake.input, snakemake.output, snakemake.params.spec,
    snakemake.params.train, snakemake.params.seed, snakemake.threads,
)

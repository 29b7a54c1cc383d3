"""evaluate: accuracy metrics and size of one model variant on the test split (the
summary adds the latency that its own exclusive job, scripts/latency.py, measured)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.threads import configure_threads


def main(inp, out, wildcards, params, threads):
    configure_threads(threads, tensorflow=not inp.model.endswith(".tflite"))
    from quantflow.models.custom import use_custom_code

    use_custom_code(params.custom)
    from quantflow.data import splits as data
    from quantflow.evaluate.accuracy import evaluate_model
    from quantflow.metrics import plot_confusion_matrix

    info = data.read_info(inp.info)
    split = data.Split(inp.test, info["input_shape"][:2])
    record = {"dataset": wildcards.dataset, "model": wildcards.model, "variant": wildcards.variant}
    record.update(
        evaluate_model(
            inp.model,
            split,
            info["num_classes"],
            batch_size=params.batch_size,
            threads=threads,
            predictions=out.predictions,
        )
    )
    if "score" in inp.keys():  # an adjustable variant: its MicroNet score, bits per channel
        record.update(json.loads(Path(inp.score).read_text()))
    if "packed" in inp.keys():  # its packed weights: the size is that file's, on disk
        record["packed_payload_bytes"] = record["size_bytes"]
        record["size_bytes"] = Path(inp.packed).stat().st_size
        record["size_kind"] = "packed file"
    record["model_path"] = inp.model
    record["confusion_png"] = str(Path(out.confusion).relative_to("results"))
    plot_confusion_matrix(
        record["confusion_matrix"],
        info["class_names"],
        out.confusion,
        f"{wildcards.dataset} / {wildcards.model} / {wildcards.variant}: "
        f"top-1 {100 * record['accuracy']:.2f}%",
    )
    Path(out.metrics).write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"{wildcards.variant}: top-1 {record['accuracy']:.4f}, top-5 {record['top5']:.4f}, "
        f"ties on {100 * record['tie_rate']:.2f}% of images (top-1), "
        f"{record['size_bytes']} bytes"
    )


run_logged(
    snakemake.log[0],
    main,
    snakemake.input,
    snakemake.output,
    snakemake.wildcards,
    snakemake.params,
    snakemake.threads,
)

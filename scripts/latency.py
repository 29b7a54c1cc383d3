"""latency: ms per image of one model variant, at batch 1 and batched, timed while this
job holds every core of the machine (the workflow runs nothing else beside it)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.threads import configure_threads


def main(inp, out, params, threads):
    # The job holds `threads` cores so that nothing else runs; the model itself runs
    # with the configured number of threads, as in the accuracy evaluation.
    configure_threads(params.threads, tensorflow=not inp.model.endswith(".tflite"))
    from quantflow.models.custom import use_custom_code

    use_custom_code(params.custom)
    from quantflow.data import splits as data
    from quantflow.evaluate.latency import measure_latency

    info = data.read_info(inp.info)
    split = data.Split(inp.test, info["input_shape"][:2])
    record = measure_latency(
        inp.model,
        split,
        batch_size=params.batch_size,
        latency_images=params.latency_images,
        latency_batches=params.latency_batches,
        threads=params.threads,
    )
    record["cores_held"] = threads
    Path(out.latency).write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"{inp.model}: {record['ms_per_image_b1']:.3f} ms/img at batch 1, "
        f"{record['ms_per_image_batched']:.4f} ms/img at batch {params.batch_size} "
        f"({params.threads} threads, {threads} cores held)"
    )


run_logged(
    snakemake.log[0], main, snakemake.input, snakemake.output, snakemake.params, snakemake.threads
)

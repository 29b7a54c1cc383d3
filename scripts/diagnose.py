"""diagnose: per-layer diagnosis of an int8 TFLite variant against the fp32 TFLite model."""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.threads import configure_threads


def main(inp, out, variant, params, threads):
    configure_threads(threads, tensorflow=False)
    from quantflow.data import splits as data
    from quantflow.evaluate.diagnosis import diagnose

    val = data.Split(inp.val, data.read_info(inp.info)["input_shape"][:2])
    images = val.sample(params.images, params.seed)
    start = time.perf_counter()
    report = diagnose(inp.reference, inp.model, images, threads=threads)
    report.update(variant=variant, seconds=time.perf_counter() - start)
    Path(out.diagnosis).write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{variant}: {report['ops']} ops compared with the fp32 model on {len(images)} "
        f"held-out images in {report['seconds']:.1f} s; output SNR "
        f"{report['output_snr_db']:.1f} dB; the layers adding the most error:"
    )
    for i in report["worst"]:
        row = report["layers"][i]
        print(
            f"  {row['index']}: {row['layer']} ({row['op']}): SNR {row['snr_db']:.1f} dB, "
            f"adds noise at {row['added_noise_db']} dB, RMSE {row['rmse_steps']} steps "
            f"of {row['scale']}, cosine {row['cosine']:.5f}"
        )
    for op in report["unmatched_ops"]:
        print(f"  op {op['index']} ({op['op']}) has no fp32 counterpart (folded there)")


run_logged(
    snakemake.log[0],
    main,
    snakemake.input,
    snakemake.output,
    snakemake.wildcards.variant,
    snakemake.params,
    snakemake.threads,
)

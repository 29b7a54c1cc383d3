"""tflite_aeq: an int4-weight TFLite model made by ai-edge-quantizer from the fp32 one
(weight-only, dynamic, or static with int8 activations calibrated on training images)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.threads import configure_threads


def main(inp, out, params, fmt):
    configure_threads(1, tensorflow=False)
    from quantflow.deploy.aeq import quantize_static_with_aeq, quantize_with_aeq
    from quantflow.deploy.convert import calibration_indices, save
    from quantflow.deploy.formats import AEQ_FORMATS, AEQ_STATIC

    if fmt in AEQ_STATIC:
        from quantflow.data import splits as data

        split = data.Split(inp.train, data.read_info(inp.info)["input_shape"][:2])
        indices = calibration_indices(len(split), params.calibration_images, params.seed)
        print(
            f"ai-edge-quantizer static recipe: int8 activations calibrated on {len(indices)} "
            f"training images (seed {params.seed}, one batch); {AEQ_STATIC[fmt][0]}-bit "
            f"weights on {', '.join(AEQ_STATIC[fmt][1])}, int8 elsewhere; from {inp.fp32}"
        )
        flatbuffer = quantize_static_with_aeq(inp.fp32, fmt, split.take(indices))
    else:
        print(f"ai-edge-quantizer recipe {AEQ_FORMATS[fmt]} on {inp.fp32}")
        flatbuffer = quantize_with_aeq(inp.fp32, fmt)
    save(flatbuffer, out.tflite)


wildcards = snakemake.wildcards
run_logged(
    snakemake.log[0],
    main,
    snakemake.input,
    snakemake.output,
    snakemake.params,
    wildcards.get("aeq") or wildcards.get("aeq_static"),
)

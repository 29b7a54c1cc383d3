"""weightonly_tflite: a fixed-point weight-only checkpoint as a LiteRT model (kernels as
int8 / INT4 codes behind DEQUANTIZE ops, float compute), checked against the checkpoint run
by TensorFlow on held-out images."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.threads import configure_threads


def main(inp, out, params):
    configure_threads(1, params.seed)
    from quantflow.models.custom import use_custom_code

    use_custom_code(params.custom)
    from quantflow.data import splits as data
    from quantflow.deploy.weightonly import export_checked
    from quantflow.formats.weights import load_weights, rebuild_model

    formats = json.loads(Path(inp.errors).read_text()).get("fixed_point", {})
    model = rebuild_model(load_weights(inp.weights))
    val = data.Split(inp.val, data.read_info(inp.info)["input_shape"][:2])
    check = export_checked(model, formats, out.tflite, val.sample(params.check_images, params.seed))
    Path(out.check).write_text(json.dumps(check, indent=2) + "\n")
    print(
        f"{out.tflite}: {check['size_bytes']} bytes; {check['kernels']}; outputs against "
        f"the checkpoint in TensorFlow on {check['images']} held-out images: largest "
        f"difference {check['max_abs_difference']:.3g} (the fp32 file's: "
        f"{check['fp32_max_abs_difference']:.3g}), top-1 agreement "
        f"{100 * check['top1_agreement']:.2f}%"
    )
    for reason in check["float_kernels"]:
        print(f"  kept float: {reason}")


run_logged(snakemake.log[0], main, snakemake.input, snakemake.output, snakemake.params)

"""tflite: convert the float model to a TFLite model with the TFLite converter (fp32, fp16,
dynamic range, full-integer int8 and its calibration studies, 16x8)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.threads import configure_threads


def main(inp, out, fmt, conversion, threads, custom):
    configure_threads(threads, conversion.get("seed"))
    from quantflow.models.custom import load_keras, use_custom_code

    use_custom_code(custom)
    import numpy as np

    from quantflow.data import splits as data
    from quantflow.deploy.check import activation_ranges
    from quantflow.deploy.convert import convert, save, select_calibration
    from quantflow.deploy.formats import needs_calibration, parse_format

    model = load_keras(inp.model, custom["model"])
    calibration = None
    if needs_calibration(fmt):
        split = data.Split(inp.train, data.read_info(inp.info)["input_shape"][:2])
        indices = select_calibration(
            split.labels, fmt, conversion["calibration_images"], conversion["seed"]
        )
        calibration = split.take(indices)
        classes = np.bincount(split.labels[indices], minlength=int(split.labels.max()) + 1)
        print(
            f"calibrating activation ranges on {len(indices)} of {len(split)} training "
            f"images (seed {conversion['seed']}); images per class: {classes.tolist()}"
        )
    flatbuffer = convert(model, fmt, calibration, io=conversion.get("io", "int8"))
    save(flatbuffer, out.tflite)
    if parse_format(fmt)["base"] == "int8":
        print("activation ranges chosen by calibration (tensor: [min, max], scale, zero point):")
        for r in activation_ranges(out.tflite):
            print(
                f"  {r['tensor']}: [{r['min']:.4g}, {r['max']:.4g}], "
                f"scale {r['scale']:.4g}, zero point {r['zero_point']}"
            )


run_logged(
    snakemake.log[0],
    main,
    snakemake.input,
    snakemake.output,
    snakemake.wildcards.fmt,
    snakemake.params.conversion,
    snakemake.threads,
    snakemake.params.custom,
)

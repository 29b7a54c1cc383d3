"""tflite: convert the float model to an fp32 or a full-int8 (PTQ) TFLite model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.logs import run_logged
from quantflow.runtime import configure_threads


def main(inp, out, fmt, params, threads):
    configure_threads(threads, params.seed)
    import keras

    from quantflow import data, tflite

    model = keras.saving.load_model(inp.model, compile=False)
    calibration = None
    if fmt == "int8":
        split = data.Split(inp.train, data.read_info(inp.info)["input_shape"][:2])
        calibration = split.take(
            tflite.calibration_indices(len(split), params.calibration_images, params.seed)
        )
        print(f"calibrating activation ranges on {len(calibration)} training images")
    flatbuffer = tflite.convert(model, fmt, calibration)
    tflite.save(flatbuffer, out.tflite)
    if fmt == "int8":
        print("activation ranges chosen by calibration (tensor: [min, max], scale, zero point):")
        for r in tflite.activation_ranges(out.tflite):
            print(f"  {r['tensor']}: [{r['min']:.4g}, {r['max']:.4g}], "
                  f"scale {r['scale']:.4g}, zero point {r['zero_point']}")


run_logged(
    snakemake.log[0], main, snakemake.input, snakemake.output, snakemake.wildcards.fmt,
    snakemake.params, snakemake.threads,
)

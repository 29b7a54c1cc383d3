"""tflite_float_fallback: int8 post-training quantization with the k layers the per-layer
diagnosis of tflite-int8 finds worst left in float."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.threads import configure_threads


def main(inp, out, k, params, threads):
    configure_threads(threads, params.seed)
    from quantflow.models.custom import load_keras, use_custom_code

    use_custom_code(params.custom)

    from quantflow.data import splits as data
    from quantflow.deploy import convert as tflite

    report = json.loads(Path(inp.diagnosis).read_text())
    chosen = [report["layers"][i] for i in report["worst"][:k]]
    if len(chosen) < k:
        print(f"the diagnosis ranks only {len(chosen)} layers; all of them stay float")
    model = load_keras(inp.model, params.custom["model"])
    split = data.Split(inp.train, data.read_info(inp.info)["input_shape"][:2])
    calibration = split.take(
        tflite.select_calibration(split.labels, "int8", params.calibration_images, params.seed)
    )
    flatbuffer = tflite.convert_with_float_layers(
        model, calibration, [row["tensor"] for row in chosen]
    )
    tflite.save(flatbuffer, out.tflite)
    print(
        f"left in float ({k} worst by the diagnosis of tflite-int8): "
        + "; ".join(
            f"{row['layer']} ({row['op']}, adds {row['added_noise_db']} dB)" for row in chosen
        )
    )
    print(f"ops computing in float: {tflite.float_ops(out.tflite)}")


run_logged(
    snakemake.log[0],
    main,
    snakemake.input,
    snakemake.output,
    int(snakemake.wildcards.k),
    snakemake.params,
    snakemake.threads,
)

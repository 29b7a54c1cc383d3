"""fat_tflite: convert a FAT fake-quant model to a fully int8 TFLite model that uses its
trained ranges, and check it against the fake-quant model on held-out images."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.threads import configure_threads


def main(inp, out, scheme_name, params, threads):
    configure_threads(threads, params.seed)
    from quantflow.models.custom import load_keras, use_custom_code

    use_custom_code(params.custom)
    from quantflow.data import splits as data
    from quantflow.deploy import check as tflite
    from quantflow.quant.schemes import parse_scheme, tflite_exportable
    import quantflow.quant.layers  # noqa: F401 (registers the fake-quant layers)

    scheme = parse_scheme(scheme_name)
    if not tflite_exportable(scheme):  # the rule's variants never ask for this
        raise SystemExit(f"{scheme_name}: LiteRT's int8 kernels cannot run this scheme exactly")
    qmodel = load_keras(inp.model, params.custom["model"])
    size = data.read_info(inp.info)["input_shape"][:2]
    train, val = data.Split(inp.train, size), data.Split(inp.val, size)
    # the int8 model must predict what the fake-quant model does
    check = tflite.convert_checked(
        qmodel,
        out.tflite,
        train,
        val,
        seed=params.seed,
        check_images=params.check_images,
        threads=threads,
    )
    check = {"scheme": scheme_name, **scheme, **check}
    Path(out.check).write_text(json.dumps(check, indent=2) + "\n")
    print(
        f"{tflite.describe_check(check)} ({scheme['weight_bits']}-bit grid: "
        f"{2 ** scheme['weight_bits'] - 1} levels)"
    )
    if check["activation_grid_mismatches"]:
        raise tflite.grid_mismatch_error(
            out.tflite, out.check, check["activation_grid_mismatches"], "trained FAT"
        )


run_logged(
    snakemake.log[0],
    main,
    snakemake.input,
    snakemake.output,
    snakemake.wildcards.scheme,
    snakemake.params,
    snakemake.threads,
)

"""fat_tflite: convert a FAT fake-quant model to a fully int8 TFLite model that uses its
trained ranges, and check it against the fake-quant model on held-out images."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.logs import run_logged
from quantflow.runtime import configure_threads


def main(inp, out, scheme_name, params, threads):
    configure_threads(threads, params.seed)
    import keras
    import numpy as np

    from quantflow import data, tflite
    from quantflow.errors import QuantflowError
    from quantflow.evaluate import TFLiteRunner
    from quantflow.schemes import parse_scheme, tflite_exportable
    from quantflow.fakequant import image_batches  # registers the fake-quant layers

    scheme = parse_scheme(scheme_name)
    if not tflite_exportable(scheme):  # the rule's variants never ask for this
        raise SystemExit(f"{scheme_name}: LiteRT's int8 kernels cannot run this scheme exactly")
    qmodel = keras.saving.load_model(inp.model, compile=False)
    size = data.read_info(inp.info)["input_shape"][:2]
    train, val = data.Split(inp.train, size), data.Split(inp.val, size)
    calibration = train.take(tflite.calibration_indices(len(train), 32, params.seed))
    flatbuffer = tflite.convert(qmodel, "int8", calibration)
    types = tflite.save(flatbuffer, out.tflite)

    # the int8 model must predict what the fake-quant model does
    rng = np.random.default_rng(params.seed)
    images = val.take(np.sort(rng.permutation(len(val))[: params.check_images]))
    runner = TFLiteRunner(out.tflite, threads)
    tflite_scores = np.concatenate([runner.scores(runner.run(runner.prepare(x)))
                                    for x in image_batches(images, batch_size=250)])
    fake_scores = np.concatenate([np.asarray(qmodel(x, training=False))
                                  for x in image_batches(images, batch_size=250)])
    fit = tflite.agreement(fake_scores, tflite_scores, float(runner.output["quantization"][0]))
    # every activation tensor must carry its trained fake-quant range, none calibrated
    mismatches = tflite.check_activation_grids(qmodel, out.tflite)
    weight_values = _weight_levels(out.tflite)
    check = {
        "scheme": scheme_name, **scheme, "size_bytes": len(flatbuffer), **types,
        "check_images": len(images), **fit,
        "max_abs_logit_difference": float(np.abs(tflite_scores - fake_scores).max()),
        "output_scale": float(runner.output["quantization"][0]),
        "weight_storage": "int8", "max_weight_levels": weight_values,
        "activation_grid_mismatches": mismatches,
    }
    Path(out.check).write_text(json.dumps(check, indent=2) + "\n")
    clear = fit["top1_agreement_clear_margin"]
    print(f"int8 TFLite vs fake-quant model on {len(images)} held-out images: top-1 agreement "
          f"{100 * fit['top1_agreement']:.2f}%, "
          f"{'n/a' if clear is None else f'{100 * clear:.2f}%'} on the "
          f"{fit['clear_margin_images']} images whose top-2 margin exceeds "
          f"{fit['clear_margin_steps']:g} output steps; logit difference mean "
          f"{fit['mean_abs_logit_difference_steps']:.3f}, largest "
          f"{fit['max_abs_logit_difference_steps']:.0f} output steps (step "
          f"{check['output_scale']:.4g}); weights stored as int8 with at most {weight_values} "
          f"distinct values per tensor ({scheme['weight_bits']}-bit grid: "
          f"{2 ** scheme['weight_bits'] - 1} levels)")
    if mismatches:
        shown = "; ".join(
            f"{m['tensor']} ({m['op']}): scale {m['scale']:.6g}, zero point {m['zero_point']}; "
            f"expected {m['expected_scale']}, {m['expected_zero_point']} "
            f"({m['quantizer'] or m.get('reason')})" for m in mismatches[:5])
        raise QuantflowError(
            f"{out.tflite}: {len(mismatches)} activation tensor(s) of the int8 TFLite model "
            f"do not carry the trained FAT ranges of the fake-quant model (the converter "
            f"calibrated them instead): {shown}. All are listed in {out.check} "
            "(activation_grid_mismatches); a layer the fake-quant transform does not model "
            "is the usual cause: report it with the model"
        )


def _weight_levels(path) -> int:
    """The largest number of distinct values in one int8 constant tensor of rank >= 2
    (the weights): 2^bits - 1 at most for a `bits`-bit grid."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    levels = 0
    for detail in interp.get_tensor_details():
        if detail["dtype"] == np.int8 and len(detail["shape"]) >= 2:
            try:
                levels = max(levels, np.unique(interp.get_tensor(detail["index"])).size)
            except ValueError:  # an activation tensor: no data before invoke
                pass
    return levels


run_logged(
    snakemake.log[0], main, snakemake.input, snakemake.output, snakemake.wildcards.scheme,
    snakemake.params, snakemake.threads,
)

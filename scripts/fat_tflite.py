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
    agreement = float(np.mean(tflite_scores.argmax(1) == fake_scores.argmax(1)))
    weight_values = _weight_levels(out.tflite)
    check = {
        "scheme": scheme_name, **scheme, "size_bytes": len(flatbuffer), **types,
        "check_images": len(images), "top1_agreement": agreement,
        "max_abs_logit_difference": float(np.abs(tflite_scores - fake_scores).max()),
        "output_scale": float(runner.output["quantization"][0]),
        "weight_storage": "int8", "max_weight_levels": weight_values,
    }
    Path(out.check).write_text(json.dumps(check, indent=2) + "\n")
    print(f"int8 TFLite vs fake-quant model on {len(images)} held-out images: top-1 agreement "
          f"{100 * agreement:.2f}%, largest logit difference "
          f"{check['max_abs_logit_difference']:.4g} (output step {check['output_scale']:.4g}); "
          f"weights stored as int8 with at most {weight_values} distinct values per tensor "
          f"({scheme['weight_bits']}-bit grid: {2 ** scheme['weight_bits'] - 1} levels)")


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

"""Checks of a converted fake-quant model against its simulation: top-1 agreement and
logit differences in output steps, activation grids the converter kept or changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantflow.deploy.convert import calibration_indices, convert, save
from quantflow.deploy.litert import interpreter
from quantflow.errors import QuantflowError
from quantflow.quant.calibrate import activation_quantizers
from quantflow.quant.layers import ActivationQuant
from quantflow.quant.lowering import SAME_GRID_OPS, SHARED_GRID_OPS


def activation_ranges(tflite_path: str) -> list[dict]:
    """The quantization chosen for each non-constant int8 tensor of a TFLite model: name,
    scale, zero point and the real range [min, max] it covers."""
    interp = interpreter(Path(tflite_path))
    constants = set()
    for op in interp._get_ops_details():
        constants.update(i for i in op["inputs"] if i >= 0 and _is_constant(interp, i))
    rows = []
    for t in interp.get_tensor_details():
        q = t["quantization_parameters"]
        if t["index"] in constants or len(q["scales"]) != 1 or np.dtype(t["dtype"]) != np.int8:
            continue
        scale, zero = float(q["scales"][0]), int(q["zero_points"][0])
        name = t["name"].split(";")[0]  # fused ops list every source op; the first names it
        rows.append(
            {
                "tensor": name,
                "scale": scale,
                "zero_point": zero,
                "min": (-128 - zero) * scale,
                "max": (127 - zero) * scale,
            }
        )
    return rows


def _is_constant(interp, index: int) -> bool:
    try:
        interp.get_tensor(index)  # constants (weights, biases) hold data before allocation
        return True
    except ValueError:
        return False


CLEAR_MARGIN_STEPS = 2.0  # a fake-quant top-2 margin above this many output steps is "clear"


def agreement(
    fq_logits, tflite_logits, output_scale: float, margin_steps: float = CLEAR_MARGIN_STEPS
) -> dict:
    """How closely an int8 TFLite model reproduces its fake-quant Keras model, from the
    logits of both on the same images (float, dequantized) and the TFLite output scale:
    `top1_agreement` (fraction of images with the same top-1 class), the same over the
    `clear_margin_images` whose fake-quant top-2 margin exceeds `margin_steps` output steps
    (`top1_agreement_clear_margin`, None when there are none; a flip there is a modelling
    error, not a rounding tie), and the mean and largest |logit difference| in output
    steps."""
    fq_logits = np.asarray(fq_logits, dtype=np.float64)
    tflite_logits = np.asarray(tflite_logits, dtype=np.float64)
    if fq_logits.shape != tflite_logits.shape or fq_logits.ndim != 2 or len(fq_logits) == 0:
        raise QuantflowError(
            f"agreement needs two (images, classes) logit arrays of one shape, got "
            f"{fq_logits.shape} and {tflite_logits.shape}"
        )
    if not output_scale > 0:
        raise QuantflowError(f"agreement needs a positive output scale, got {output_scale}")
    same = fq_logits.argmax(1) == tflite_logits.argmax(1)
    steps = np.abs(fq_logits - tflite_logits) / output_scale
    if fq_logits.shape[1] > 1:
        top2 = np.sort(fq_logits, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) / output_scale > margin_steps
    else:
        clear = np.ones(len(same), bool)
    return {
        "images": int(len(same)),
        "top1_agreement": float(same.mean()),
        "clear_margin_steps": float(margin_steps),
        "clear_margin_images": int(clear.sum()),
        "top1_agreement_clear_margin": float(same[clear].mean()) if clear.any() else None,
        "mean_abs_logit_difference_steps": float(steps.mean()),
        "max_abs_logit_difference_steps": float(steps.max()),
    }


def check_activation_grids(qmodel, tflite_model: bytes | str, rtol: float = 1e-5) -> list[dict]:
    """Every int8 activation tensor of the TFLite conversion of the fake-quant model
    `qmodel` must carry the scale and zero point of the fake-quant op (ActivationQuant) it
    came from: the converter also gets a representative dataset, so a tensor without one
    would be calibrated silently. Tensors are mapped to quantizers by the Keras layer that
    produced them (TFLite names a fused op's output after its source ops); the model input
    and output by position; the output of an op that keeps its input's grid (PAD, max
    pooling, reshapes: SAME_GRID_OPS) must equal its input's. Returns the mismatches, one
    dict each (tensor, op, expected and actual scale / zero point, quantizer or reason);
    empty when every tensor matches."""
    import re

    interp = interpreter(tflite_model)
    details = {t["index"]: t for t in interp.get_tensor_details()}
    by_layer: dict[str, object] = {}
    quantizers = activation_quantizers(qmodel)
    for aq in quantizers:
        for node in aq._inbound_nodes:
            for tensor in node.input_tensors:
                by_layer.setdefault(tensor._keras_history.operation.name, aq)
    for aq in quantizers:  # a tensor named after its fake-quant op (a float island's)
        by_layer.setdefault(aq.name, aq)
    input_quant = next(
        (aq for aq in quantizers if aq._inbound_nodes[0].input_tensors[0] is qmodel.inputs[0]), None
    )
    output_layer = qmodel.outputs[0]._keras_history.operation
    output_quant = output_layer if isinstance(output_layer, ActivationQuant) else None

    def expected(aq) -> tuple[float, int]:
        lo, hi = (float(v) for v in aq.quant_range())
        levels = 2**aq.bits - 1
        scale = (hi - lo) / levels
        zero = min(max(-lo / scale, 0.0), float(levels))
        return scale, int(np.floor(zero + 0.5)) - 2 ** (aq.bits - 1)

    def actual(index: int) -> tuple[float, int] | None:
        t = details[index]
        q = t["quantization_parameters"]
        if np.dtype(t["dtype"]) != np.int8 or len(q["scales"]) != 1:
            return None
        return float(q["scales"][0]), int(q["zero_points"][0])

    def scope_layers(name: str) -> list[str]:
        found = []
        for part in name.split(";"):
            pieces = part.split("/")
            if len(pieces) >= 3:
                found.append(re.sub(r"_\d+$", "", pieces[1]))
        return found

    mismatches = []

    def compare(index, op_name, aq, reference=None, reason=None):
        got = actual(index)
        if got is None:
            return
        want = expected(aq) if aq is not None else reference
        ok = want is not None and abs(got[0] - want[0]) <= rtol * abs(want[0]) and got[1] == want[1]
        if not ok:
            mismatches.append(
                {
                    "tensor": details[index]["name"].split(";")[0],
                    "op": op_name,
                    "quantizer": aq.name if aq is not None else None,
                    "expected_scale": None if want is None else want[0],
                    "expected_zero_point": None if want is None else want[1],
                    "scale": got[0],
                    "zero_point": got[1],
                    **({"reason": reason} if reason else {}),
                }
            )

    model_input = interp.get_input_details()[0]["index"]
    model_output = interp.get_output_details()[0]["index"]
    if input_quant is not None:
        compare(model_input, "input", input_quant)
    ops = interp._get_ops_details()
    readers: dict[int, list[int]] = {}
    for i, op in enumerate(ops):
        for index in dict.fromkeys(op["inputs"]):
            readers.setdefault(index, []).append(i)
    for op in ops:
        for index in op["outputs"]:
            if index < 0 or actual(index) is None:
                continue
            if index == model_output and output_quant is not None:
                compare(index, op["op_name"], output_quant)
                continue
            aq = next(
                (by_layer[n] for n in scope_layers(details[index]["name"]) if n in by_layer), None
            )
            if aq is not None:
                compare(index, op["op_name"], aq)
            elif op["op_name"] in SAME_GRID_OPS and op["inputs"][0] >= 0:
                compare(
                    index, op["op_name"], None, actual(op["inputs"][0]), "not on its input's grid"
                )
            elif (
                op["op_name"] in SHARED_GRID_OPS
                and len({actual(i) for i in op["inputs"] if i >= 0}) == 1
            ):
                # e.g. a grayscale image tiled to RGB: one grid in, the same grid out
                compare(
                    index,
                    op["op_name"],
                    None,
                    actual(op["inputs"][0]),
                    "not on the grid its inputs share",
                )
            elif (shared := _shared_grid(index, ops, readers)) is not None:
                compare(
                    index,
                    op["op_name"],
                    None,
                    actual(shared),
                    "not on the grid of the concatenation it feeds",
                )
            else:
                compare(index, op["op_name"], None, None, "no fake-quant op in the Keras model")
    return mismatches


def _shared_grid(index: int, ops: list, readers: dict) -> int | None:
    """The output tensor of the CONCATENATION (MAXIMUM, MINIMUM) that tensor `index` only
    feeds, through ops that keep its grid, or None: the fake-quant transform gives such a
    tensor no quantizer of its own, TFLite puts it on that op's output grid."""
    while len(readers.get(index, [])) == 1:
        op = ops[readers[index][0]]
        if op["op_name"] in SHARED_GRID_OPS:
            return op["outputs"][0]
        if op["op_name"] not in SAME_GRID_OPS:
            return None
        index = op["outputs"][0]
    return None


def convert_checked(
    qmodel,
    path: str | Path,
    train,
    val,
    *,
    seed: int,
    check_images: int,
    threads: int = 1,
    batch_size: int = 250,
) -> dict:
    """Convert a fake-quant model (int8-exact layers: FAT's, or the adjustable model's
    export) to a fully integer TFLite model at `path` (the converter's representative
    data: 32 seeded images of the `train` Split; its ranges are the model's own; kernels of
    at most 4 bits stored as INT4: `quantflow.deploy.int4`), and check it against the
    fake-quant model on `check_images` seeded images of the `val` Split: `agreement` of the
    logits, the activation tensors whose scale is not the fake-quant range
    (`check_activation_grids`: the converter calibrated them instead; should be none) and
    how the kernels are stored (`weight_storage`). The model's float islands (layers with
    no int8 form, `quantflow.quant.lowering.island_layers`) stay float in the file:
    `float_islands` lists them with the ops they became. Returns the check record (its
    "activation_grid_mismatches" for the caller to judge)."""
    from quantflow.deploy.int4 import int4_kernels, store_int4, weight_storage
    from quantflow.deploy.litert import TFLiteRunner
    from quantflow.quant.calibrate import image_batches
    from quantflow.quant.lowering import island_layers

    calibration = train.take(calibration_indices(len(train), 32, seed))
    images = val.sample(check_images, seed)
    islands = island_layers(qmodel)
    flatbuffer = convert(qmodel, "int8", calibration, float_islands=[i["layer"] for i in islands])
    kernels = int4_kernels(qmodel)
    if kernels:  # the <= 4-bit kernels as INT4, on the simulation's grid
        flatbuffer = store_int4(flatbuffer, kernels)
    types = save(flatbuffer, path)
    runner = TFLiteRunner(path, threads)
    tflite_scores = np.concatenate(
        [
            runner.scores(runner.run(runner.prepare(x)))
            for x in image_batches(images, batch_size=batch_size)
        ]
    )
    fake_scores = np.concatenate(
        [
            np.asarray(qmodel(x, training=False))
            for x in image_batches(images, batch_size=batch_size)
        ]
    )
    output_scale = float(runner.output["quantization"][0])
    return {
        "size_bytes": len(flatbuffer),
        **types,
        "check_images": len(images),
        **agreement(fake_scores, tflite_scores, output_scale),
        "max_abs_logit_difference": float(np.abs(tflite_scores - fake_scores).max()),
        "output_scale": output_scale,
        "weight_storage": weight_storage(flatbuffer),
        "float_islands": [{**i, "float_ops": island_ops(flatbuffer, i["layer"])} for i in islands],
        "activation_grid_mismatches": check_activation_grids(qmodel, str(path)),
    }


def island_ops(tflite_model: bytes | str, layer: str) -> list[str]:
    """The float ops of a fake-quant model's float island `layer` in its TFLite file (the
    island's own ops; its CAST fences left out)."""
    from quantflow.deploy.convert import float_op_outputs
    from quantflow.quant.lowering import island_scope

    scope = island_scope(layer)
    return [
        op for op, name in float_op_outputs(tflite_model) if op != "CAST" and scope.search(name)
    ]


def describe_check(check: dict) -> str:
    """One sentence on a `convert_checked` record, for the job's log."""
    clear = check["top1_agreement_clear_margin"]
    return (
        f"TFLite model vs fake-quant model on {check['images']} held-out images: top-1 "
        f"agreement {100 * check['top1_agreement']:.2f}%, "
        f"{'n/a' if clear is None else f'{100 * clear:.2f}%'} on the "
        f"{check['clear_margin_images']} images whose top-2 margin exceeds "
        f"{check['clear_margin_steps']:g} output steps; logit difference mean "
        f"{check['mean_abs_logit_difference_steps']:.3f}, largest "
        f"{check['max_abs_logit_difference_steps']:.0f} output steps (step "
        f"{check['output_scale']:.4g}); {describe_storage(check['weight_storage'])}"
        + "".join(
            f"; float island {i['layer']} ({i['class']}): "
            f"{', '.join(i['float_ops']) or 'no float op'}"
            for i in check.get("float_islands", [])
        )
    )


def describe_storage(storage: dict) -> str:
    """How the kernels are stored, in words (from `quantflow.deploy.int4.weight_storage`)."""
    parts = [
        f"{storage[kind]} as {kind.upper()} ({storage[f'{kind}_bytes']:,} B)"
        for kind in ("int4", "int8")
        if storage[kind]
    ]
    return (
        f"kernels stored {' and '.join(parts) or 'as float'}, at most "
        f"{storage['max_levels']} distinct codes in one"
    )


def grid_mismatch_error(path, check_path, mismatches: list, what: str) -> QuantflowError:
    """The error for activation tensors that did not keep their fake-quant ranges."""
    shown = "; ".join(
        f"{m['tensor']} ({m['op']}): scale {m['scale']:.6g}, zero point {m['zero_point']}; "
        f"expected {m['expected_scale']}, {m['expected_zero_point']} "
        f"({m['quantizer'] or m.get('reason')})"
        for m in mismatches[:5]
    )
    return QuantflowError(
        f"{path}: {len(mismatches)} activation tensor(s) of the int8 TFLite model do not "
        f"carry the {what} ranges of the fake-quant model (the converter calibrated them "
        f"instead): {shown}. All are listed in {check_path} (activation_grid_mismatches); a "
        "layer the fake-quant transform does not model is the usual cause: report it with "
        "the model"
    )

"""Per-layer diagnosis of an int8 TFLite model: every op's output against the same op's
output in the fp32 TFLite model of the same network, on the same images, in LiteRT.

    report = diagnose(fp32_path, int8_path, images)
    report["layers"]   # in network order: op, tensor, scale, SNR, its drop, RMSE, cosine
    report["worst"]    # the layers that add the most error, worst first

Matching. Both models come from one Keras graph through the converter (the int8 PTQ
models), or from its fake-quant twin whose ops are the ones TFLite runs (FAT and
adjustable exports), so after dropping QUANTIZE / DEQUANTIZE (the int8 model's I/O
conversions) the two op sequences are the same op types in the same order, but for ops
the fp32 conversion folds away (a Rescaling's MUL in front of a convolution, kept in a
fake-quant export; SUB there is an ADD of the negated constant here): ops are paired
along the longest common sequence of op types (`align`), shape computations skipped,
every fp32 op must find its partner of the same type and output shape, and
`diagnose` refuses two models that differ otherwise rather than compare the wrong
tensors. Nested and residual models flatten to one op sequence the same way in both.

Per matched op, with r the fp32 output and q the int8 output dequantized (its scale and
zero point), over every element of every image:

    SNR (dB)       10 log10(sum r^2 / sum (r - q)^2)          (capped at MAX_SNR_DB)
    RMSE (steps)   sqrt(mean (r - q)^2) / scale               (the error in int8 steps)
    cosine         r . q / (|r| |q|)
    channel SNR    -10 log10 of the mean over channels of each channel's noise/signal:
                   a small channel counts as much as a large one (a per-tensor range
                   set by one large channel leaves the others a few levels: the tensor's
                   SNR hides it, the channel SNR does not)
    added noise    the channel noise/signal of the output - that of the op's noisiest
                   activation input (also in dB): the relative error the op itself adds
                   (its own rounding and clipping), which ranks a damaged layer first
                   where SNR alone also blames every layer after it. Negative: the op
                   averages or clips error away (pooling, ReLU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantflow.deploy.litert import interpreter
from quantflow.errors import QuantflowError

MAX_SNR_DB = 100.0
IO_OPS = ("QUANTIZE", "DEQUANTIZE", "DELEGATE")
# ops that may stand for one another across the two conversions: a subtraction of a
# constant (Normalization's mean) is an ADD of its negative in a fake-quant export
SAME_KIND = {"SUB": "ADD"}
# integer tensors that are not quantized activations (shapes, indices): not compared
INDEX_DTYPES = ("int32", "int64")


def _interpreter(path: str | Path, batch: int, threads: int):
    # the built-in kernels, no XNNPACK delegate: every op's output is kept and readable
    interp = interpreter(Path(path), threads=threads, inspect=True)
    detail = interp.get_input_details()[0]
    interp.resize_tensor_input(detail["index"], [batch, *detail["shape"][1:]])
    interp.allocate_tensors()
    return interp


def _ops(interp) -> list[dict]:
    """The ops but the I/O conversions (and delegate nodes), in execution order."""
    return [op for op in interp._get_ops_details() if op["op_name"] not in IO_OPS]


def _feed(interp, images: np.ndarray) -> None:
    detail = interp.get_input_details()[0]
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        x = images.astype(dtype)
    else:
        scale, zero = detail["quantization"]
        info = np.iinfo(dtype)
        x = np.clip(np.round(images / scale) + zero, info.min, info.max).astype(dtype)
    interp.set_tensor(detail["index"], x)
    interp.invoke()


def _details(interp) -> dict[int, dict]:
    return {d["index"]: d for d in interp.get_tensor_details()}


def _value(interp, details: dict, index: int) -> tuple[np.ndarray, float | None, int | None]:
    """A tensor as float (dequantized when integer), with its scale and zero point."""
    detail = details[index]
    data = interp.get_tensor(index)
    if np.dtype(data.dtype).kind == "f":
        return data.astype(np.float64), None, None
    q = detail["quantization_parameters"]
    scales, zeros = np.asarray(q["scales"]), np.asarray(q["zero_points"])
    if scales.size != 1:
        raise QuantflowError(f"tensor {detail['name']!r}: per-channel activation quantization")
    return (data.astype(np.float64) - zeros[0]) * scales[0], float(scales[0]), int(zeros[0])


def snr_db(reference: np.ndarray, value: np.ndarray) -> float:
    """Signal-to-noise ratio of `value` against `reference` in dB (MAX_SNR_DB when equal)."""
    noise = float(np.sum((reference - value) ** 2))
    signal = float(np.sum(reference**2))
    if noise == 0.0:
        return MAX_SNR_DB
    if signal == 0.0:
        return -MAX_SNR_DB
    return float(min(MAX_SNR_DB, 10.0 * np.log10(signal / noise)))


def noise_ratio(reference: np.ndarray, value: np.ndarray) -> float:
    """sum (r - q)^2 / sum r^2 (0 when both are 0)."""
    noise = float(np.sum((reference - value) ** 2))
    signal = float(np.sum(reference**2))
    return noise / signal if signal > 0 else (0.0 if noise == 0 else float("inf"))


def channel_noise_ratio(reference: np.ndarray, value: np.ndarray) -> float:
    """The mean over channels (last axis) of each channel's noise / signal: a channel
    whose values are small next to another's counts as much as that one (per-tensor
    int8 ranges fail exactly there); channels whose reference is all zero are left out
    (a dead channel has no signal to lose)."""
    r = reference.reshape(-1, reference.shape[-1])
    q = value.reshape(-1, value.shape[-1])
    signal = np.sum(r**2, axis=0)
    noise = np.sum((r - q) ** 2, axis=0)
    live = signal > 0
    return float(np.mean(noise[live] / signal[live])) if live.any() else 0.0


def _db(ratio: float | None) -> float | None:
    """A positive ratio in dB; None for none or for an op that removes error."""
    if ratio is None or ratio <= 0:
        return None
    return float(max(10.0 * np.log10(ratio), -MAX_SNR_DB))


def cosine(reference: np.ndarray, value: np.ndarray) -> float:
    """Cosine similarity of the two tensors, flattened (1 for two equal zero tensors)."""
    a, b = reference.ravel(), value.ravel()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norm) if norm > 0 else (1.0 if np.array_equal(a, b) else 0.0)


def layer_name(tensor: str) -> str:
    """A readable name: the first source op of a fused tensor, without the model scope."""
    first = tensor.split(";")[0]
    if first.startswith("StatefulPartitionedCall"):  # the converter's name of the output
        return "output"
    parts = first.split("/")
    return "/".join(parts[1:-1]) if len(parts) > 2 else first


def align(ref_ops: list, tgt_ops: list, target_path, reference_path) -> tuple[list, list]:
    """Pairs (fp32 op, int8 op) of the same type in order (the longest common sequence of
    op types), and the int8 ops left without a partner (e.g. the MUL of a Rescaling the
    fp32 conversion folded into the next convolution). Every fp32 op must find its
    partner, or the two are not the same network."""
    from difflib import SequenceMatcher

    ref_types = [SAME_KIND.get(op["op_name"], op["op_name"]) for op in ref_ops]
    tgt_types = [SAME_KIND.get(op["op_name"], op["op_name"]) for op in tgt_ops]
    matcher = SequenceMatcher(a=ref_types, b=tgt_types, autojunk=False)
    pairs, used = [], set()
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            pairs.append((ref_ops[block.a + k], tgt_ops[block.b + k]))
            used.add(block.b + k)
    if len(pairs) != len(ref_ops):
        missing = [t for i, t in enumerate(ref_types) if not any(p[0] is ref_ops[i] for p in pairs)]
        raise QuantflowError(
            f"{target_path}: {len(ref_ops) - len(pairs)} of the {len(ref_ops)} ops of "
            f"{reference_path} have no counterpart in it ({', '.join(missing[:5])}): not the "
            "same network, cannot match its tensors"
        )
    unmatched = [{"index": j, "op": op["op_name"]} for j, op in enumerate(tgt_ops) if j not in used]
    return pairs, unmatched


def diagnose(
    reference_path: str | Path,
    target_path: str | Path,
    images: np.ndarray,
    threads: int = 1,
    worst: int = 5,
) -> dict:
    """Compare every op output of the int8 model `target_path` with the fp32 model
    `reference_path` on `images` (float pixels, one batch). See the module doc."""
    images = np.asarray(images, dtype=np.float32)
    ref = _interpreter(reference_path, len(images), threads)
    tgt = _interpreter(target_path, len(images), threads)
    ref_ops, tgt_ops = _ops(ref), _ops(tgt)
    pairs, unmatched = align(ref_ops, tgt_ops, target_path, reference_path)
    _feed(ref, images)
    _feed(tgt, images)
    ref_details, tgt_details = _details(ref), _details(tgt)
    # noise / signal of every target tensor that is an op output or the model input
    nsr_of: dict[int, float] = {}
    tgt_input = tgt.get_input_details()[0]["index"]
    ref_input = ref.get_input_details()[0]["index"]
    layers = []
    partner = {id(t): r for r, t in pairs}
    x_ref, _, _ = _value(ref, ref_details, ref_input)
    x_tgt, _, _ = _value(tgt, tgt_details, tgt_input)
    nsr_of[tgt_input] = channel_noise_ratio(x_ref, x_tgt)
    for tgt_op in tgt_ops:
        inputs = [nsr_of[t] for t in tgt_op["inputs"] if t in nsr_of]
        if id(tgt_op) not in partner:  # no fp32 counterpart: its output inherits the error
            if inputs:
                nsr_of[tgt_op["outputs"][0]] = max(inputs)
            continue
        ref_op = partner[id(tgt_op)]
        if np.dtype(tgt_details[tgt_op["outputs"][0]]["dtype"]).name in INDEX_DTYPES:
            continue  # a shape or index computation (e.g. SHAPE before a RESHAPE)
        r_out, t_out = ref_op["outputs"][0], tgt_op["outputs"][0]
        r, _, _ = _value(ref, ref_details, r_out)
        q, scale, zero = _value(tgt, tgt_details, t_out)
        if r.shape != q.shape:
            raise QuantflowError(
                f"{target_path}: op {len(layers)} ({tgt_op['op_name']}) has shape {q.shape}, "
                f"the fp32 model's {r.shape}: not the same network"
            )
        snr = snr_db(r, q)
        nsr_of[t_out] = channel_noise_ratio(r, q)
        added = nsr_of[t_out] - max(inputs) if inputs else None
        name = tgt_details[t_out]["name"]
        error = np.sqrt(np.mean((r - q) ** 2))
        layers.append(
            {
                "index": len(layers),
                "op": tgt_op["op_name"],
                "tensor": name,
                "reference_tensor": ref_details[r_out]["name"],
                "layer": layer_name(name),
                "scale": scale,
                "zero_point": zero,
                "snr_db": snr,
                "channel_snr_db": -_db(nsr_of[t_out]) if nsr_of[t_out] > 0 else MAX_SNR_DB,
                "added_noise": added,
                "added_noise_db": _db(added),
                "rmse_steps": float(error / scale) if scale else None,
                "cosine": cosine(r, q),
            }
        )
    ranked = sorted(
        (row for row in layers if row["added_noise"] is not None),
        key=lambda row: -row["added_noise"],
    )
    return {
        "reference": str(reference_path),
        "target": str(target_path),
        "images": int(len(images)),
        "ops": len(layers),
        "layers": layers,
        "worst": [row["index"] for row in ranked[:worst]],
        "unmatched_ops": unmatched,
        "output_snr_db": layers[-1]["snr_db"] if layers else None,
    }

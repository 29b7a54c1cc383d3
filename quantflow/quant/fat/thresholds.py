"""FAT's thresholds file (thresholds.pickle): written by the fat job, read by the adjustable
job (init_from_fat) and the report (alpha statistics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantflow.errors import QuantflowError
from quantflow.formats.safepickle import load_plain, rerun_advice, save_plain
from quantflow.quant.schemes import parse_scheme, tflite_exportable  # noqa: F401 (re-exported)

THRESHOLDS_FORMAT = 1


def save_thresholds(path: str | Path, data: dict) -> None:
    """Write a thresholds record (plain dicts, lists and numbers, see `quantflow.quant.transform.
    thresholds`; numpy arrays become array records) as a pickle of plain values,
    atomically (quantflow.formats.safepickle.save_plain); read it back with `load_thresholds`."""
    save_plain({"format": THRESHOLDS_FORMAT, **data}, path, what="thresholds")


def load_thresholds(path: str | Path) -> dict:
    """A thresholds file, through quantflow.formats.safepickle's plain loader: no global is
    resolved (nothing in it is executed), arrays are checked against the file's size."""
    data = load_plain(path, what="thresholds file", rerun="fat")
    if not isinstance(data, dict) or data.get("format") != THRESHOLDS_FORMAT:
        raise QuantflowError(
            f"{path}: not a quantflow thresholds file (format {THRESHOLDS_FORMAT}); "
            + rerun_advice("fat")
        )
    return data


def alpha_values(info: dict) -> dict[str, np.ndarray]:
    """All symmetric-threshold alphas of a `thresholds` dict, by kind ("weight": one per
    channel or tensor, "activation": one per tensor), as flat arrays (asymmetric ranges
    contribute their width alpha_R)."""
    values = {"weight": [], "activation": []}
    for row in info.values():
        alpha = row.get("alpha", row.get("alpha_r"))
        if alpha is not None:
            values[row["kind"]].append(np.ravel(np.asarray(alpha, dtype=np.float64)))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in values.items()}

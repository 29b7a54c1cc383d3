"""Resume state of a training loop: what a job killed part-way (a failed worker, a
preempted node, Ctrl-C) needs to go on from its last finished epoch instead of from the
start.

    state = ResumeState(directory, fingerprint={"scheme": ..., "inputs": ...}, write=chief)
    saved = state.load()                # None, or (meta dict, {name: array})
    ...
    state.save({"epoch": 3, ...}, {"alphas/0": array, ...})   # after every epoch
    state.clear()                       # once the job's outputs are written

One file, `state.npz` (the arrays and the meta JSON together), written atomically: a
reader sees the previous epoch's state or the new one, never a mixture. Only the writer
(the chief of a multi-worker job) saves and clears; every worker loads, so all of them
start from the same values. A state whose fingerprint (what the job computes from: inputs,
settings, seed) differs from the job's is ignored and later overwritten: a changed config
never resumes from another run.

The directory is not a declared output of the job: Snakemake deletes a failed job's
outputs before it reruns it, and this state must outlive them."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np

from quantflow.errors import QuantflowError
from quantflow.formats.atomic import write_atomic

STATE_FILE = "state.npz"
_META = "__meta__"


def fingerprint_files(*paths: str | Path) -> dict:
    """{path: sha256} of input files (a directory, such as a SavedModel, by its files'
    sizes and names): what makes a resume state belong to these inputs."""
    out = {}
    for path in map(Path, paths):
        if path.is_dir():
            entries = sorted(
                f"{p.relative_to(path)}:{p.stat().st_size}" for p in path.rglob("*") if p.is_file()
            )
            out[str(path)] = hashlib.sha256("\n".join(entries).encode()).hexdigest()
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        out[str(path)] = digest.hexdigest()
    return out


class ResumeState:
    """The resume state of one job under `directory` (see the module doc)."""

    def __init__(self, directory: str | Path, fingerprint: dict, write: bool = True):
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE
        self.key = hashlib.sha256(
            json.dumps(fingerprint, sort_keys=True, default=str).encode()
        ).hexdigest()
        self.write = write

    def load(self) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(meta, arrays) of the last saved epoch, or None: no state, another job's (its
        fingerprint differs) or an unreadable one (a note says so on stdout)."""
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as f:
                meta = json.loads(str(f[_META]))
                arrays = {name: f[name] for name in f.files if name != _META}
        except (OSError, ValueError, KeyError) as e:
            print(f"resume state {self.path} unreadable ({e}): starting from the beginning")
            return None
        if meta.get("key") != self.key:
            print(
                f"resume state {self.path} belongs to other inputs or settings: "
                "starting from the beginning"
            )
            return None
        return meta["state"], arrays

    def save(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Replace the state with `meta` (JSON-able) and `arrays`, atomically."""
        if not self.write:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(
            buffer, **{_META: np.array(json.dumps({"key": self.key, "state": meta}))}, **arrays
        )
        write_atomic(self.path, buffer.getvalue())

    def clear(self) -> None:
        """Remove the state (the job finished)."""
        if self.write:
            shutil.rmtree(self.directory, ignore_errors=True)


def variable_arrays(prefix: str, variables) -> dict[str, np.ndarray]:
    """{"<prefix>/<i>": value} of variables (Keras or TensorFlow, mirrored or not)."""
    return {f"{prefix}/{i}": np.array(v.numpy()) for i, v in enumerate(variables)}


def restore_variables(prefix: str, variables, arrays: dict) -> None:
    """Assign what `variable_arrays(prefix, ...)` saved; a state that does not fit (another
    model) is refused with the advice to delete it."""
    for i, variable in enumerate(variables):
        value = arrays.get(f"{prefix}/{i}")
        if value is None or value.shape != tuple(variable.shape):
            raise QuantflowError(
                f"the resume state does not fit this model ({prefix} {i}: "
                f"{None if value is None else value.shape} vs {tuple(variable.shape)}); "
                "delete it to start over"
            )
        variable.assign(value)
    if f"{prefix}/{len(variables)}" in arrays:
        raise QuantflowError(
            f"the resume state does not fit this model (more {prefix} values than "
            "variables); delete it to start over"
        )


def optimizer_state(optimizer) -> list:
    """A Keras optimizer's state besides its learning rate: step count and moments."""
    return [v for v in optimizer.variables if v is not optimizer.learning_rate]

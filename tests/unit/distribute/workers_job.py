"""One worker of a multi-worker FAT job, run by test_workers.py (TF_CONFIG in its
environment names the cluster and this worker): the FAT job as the workflow runs it,
from files to files, every worker given the same outputs (only the chief writes).

    python workers_job.py FILES_DIR OUT_DIR CFG_JSON

DIE_AT_STEP=n: the worker kills itself (SIGKILL, as a crash or a preemption would) when
it is about to run global training step n."""

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from quantflow.workflow.threads import configure_threads  # noqa: E402

files, out, cfg = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
configure_threads(1, 1)
from quantflow.distribute import strategy as dist  # noqa: E402

strategy = dist.make_strategy({"strategy": "auto"})
print(f"training on {dist.describe(strategy)}", flush=True)

from quantflow.quant.fat import train  # noqa: E402
from quantflow.quant.fat.job import FatFiles, FatOutputs, run  # noqa: E402

if os.environ.get("DIE_AT_STEP"):
    die_at, make_step = int(os.environ["DIE_AT_STEP"]), train._distributed_step

    def dying_step(*args):
        step, count = make_step(*args), [0]

        def wrapped(x, rate):
            if count[0] == die_at:
                print(f"killing myself at step {die_at}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            count[0] += 1
            return step(x, rate)

        return wrapped

    train._distributed_step = dying_step

inputs = FatFiles(
    *(str(files / name) for name in ("model.keras", "train.npz", "val.npz", "info.json"))
)
out.mkdir(parents=True, exist_ok=True)
summary = run(
    inputs, FatOutputs.under(out), "w4a4-sym-pt", cfg, seed=1, threads=1, strategy=strategy
)
print(json.dumps({"chief": dist.is_chief(strategy), "replicas": dist.replicas(strategy)}))

"""A real single-node SLURM cluster that a test owns.

Everything it writes (munge key and socket, slurm.conf, state, spool, logs, pid files)
lives under one temporary directory; it starts munged, slurmctld and slurmd from the
Debian packages (slurmctld, slurmd, slurm-client, munge) in the foreground as child
processes, and stops exactly those processes again. Nothing under /etc, /run or /var is
read or written, so it runs beside (or instead of) a system SLURM without touching it.

Clients find the cluster through SLURM_CONF; `env()` gives the environment a
`snakemake --executor slurm` process needs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "scontrol", "srun")
PARTITION = "debug"


class SlurmUnavailable(Exception):
    """SLURM cannot run here (not installed, not root, or a daemon did not come up)."""


def missing_programs(path: str | None = None) -> list[str]:
    """The SLURM and munge programs not found on PATH."""
    return [p for p in DAEMONS + CLIENTS if shutil.which(p, path=path) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmUnavailable("cannot read MemTotal from /proc/meminfo")


class SlurmCluster:
    """slurmctld + slurmd on this host with one partition, `debug`, authenticated by a
    munged of its own.

    `memory_mb`: the memory the node offers to jobs. Memory is a consumable resource
    (select/cons_tres, CR_Core_Memory), so a job asking for more than this never starts.
    When it exceeds the machine's (a profile written for real cluster nodes on a small
    test machine), the node is declared with it anyway (SlurmdParameters=config_overrides):
    nothing enforces memory here (no cgroups), so only scheduling sees the figure.
    """

    def __init__(self, memory_mb: int | None = None, cpus: int | None = None):
        if os.geteuid() != 0:
            raise SlurmUnavailable(
                "a test SLURM cluster needs root (slurmd runs jobs as their user)"
            )
        missing = missing_programs()
        if missing:
            raise SlurmUnavailable(
                f"not found on PATH: {', '.join(missing)} (Debian: apt-get install slurmctld "
                "slurmd slurm-client munge; the daemons are in /usr/sbin)"
            )
        # Short path: munged's unix socket path must stay under 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="qf-slurm-"))
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.machine_memory_mb = _memory_mb()
        self.memory_mb = max(memory_mb or 0, self.machine_memory_mb)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.bin = self.root / "bin"
        self.procs: dict[str, subprocess.Popen] = {}

    # -- configuration -----------------------------------------------------------------

    def _write_files(self) -> None:
        for d in ("munge", "state", "spool", "log", "bin"):
            (self.root / d).mkdir(mode=0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        r = self.root
        self.conf.write_text(textwrap.dedent(f"""\
            # written by tests/cluster/slurm.py; everything lives under {r}
            ClusterName=quantflowtest
            SlurmctldHost={self.host}(127.0.0.1)
            SlurmctldPort={_free_port()}
            SlurmdPort={_free_port()}
            AuthType=auth/munge
            CredType=cred/munge
            AuthInfo=socket={self.munge_socket}
            SlurmUser=root
            SlurmdUser=root
            StateSaveLocation={r}/state
            SlurmdSpoolDir={r}/spool
            SlurmctldPidFile={r}/slurmctld.pid
            SlurmdPidFile={r}/slurmd.pid
            SlurmctldLogFile={r}/log/slurmctld.log
            SlurmdLogFile={r}/log/slurmd.log
            SlurmctldDebug=info
            SlurmdDebug=info
            # no cgroups, no accounting database: the plainest cluster there is
            ProctrackType=proctrack/linuxproc
            TaskPlugin=task/none
            JobAcctGatherType=jobacct_gather/none
            AccountingStorageType=accounting_storage/none
            JobCompType=jobcomp/none
            MpiDefault=none
            SwitchType=switch/none
            MailProg=/bin/true
            # without accounting, squeue is the only source of job states: keep finished
            # jobs visible for 10 minutes (snakemake --slurm-status-command squeue)
            MinJobAge=600
            SelectType=select/cons_tres
            SelectTypeParameters=CR_Core_Memory
            SlurmdParameters=config_overrides
            ReturnToService=2
            SchedulerType=sched/backfill
            NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
            PartitionName={PARTITION} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
            """))
        # snakemake-executor-plugin-slurm-jobstep (0.6) runs each job as `srun ...` inside
        # the allocation, but first drops every SLURM_* variable but the job's identity,
        # SLURM_CONF included. A cluster whose slurm.conf sits at the default path (or is
        # served configless) does not notice; this one does, so its srun gets it back.
        srun = self.bin / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which("srun")} "$@"\n')
        srun.chmod(0o755)

    def env(self, base: dict | None = None) -> dict:
        """Environment for processes that talk to this cluster (snakemake, sbatch, ...)."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        for var in list(env):  # nothing from an enclosing allocation or user defaults
            if var.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_")) and var != "SLURM_CONF":
                del env[var]
        return env

    # -- processes -----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "wb")
        self.procs[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(),
            start_new_session=True,
        )
        log.close()

    def _wait(self, what: str, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(
                        f"{name} exited with {proc.returncode} while waiting "
                        f"for {what}\n{self.logs()}"
                    )
            if ready():
                return
            time.sleep(0.3)
        raise SlurmUnavailable(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        proc = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def node_state(self) -> str:
        proc = self.run("sinfo", "-h", "-N", "-n", self.host, "-o", "%T", check=False, timeout=10)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def start(self, timeout: float = 60) -> "SlurmCluster":
        self._write_files()
        m = self.root / "munge"
        try:
            self._spawn(
                "munged",
                [
                    "munged",
                    "--foreground",
                    "--force",
                    f"--socket={self.munge_socket}",
                    f"--key-file={m}/munge.key",
                    f"--pid-file={m}/munged.pid",
                    f"--log-file={self.root}/log/munged.log",
                    f"--seed-file={m}/munged.seed",
                ],
            )
            self._wait("munged's socket", self.munge_socket.exists, timeout)
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._wait(
                "slurmctld",
                lambda: self.run("scontrol", "ping", check=False, timeout=10).returncode == 0,
                timeout,
            )
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.host])
            self._wait(f"node {self.host} idle", lambda: self.node_state() == "idle", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel this cluster's jobs, stop its daemons (those this object started, by pid),
        remove its directory."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            jobs = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False, timeout=10)
                deadline = time.monotonic() + 30
                while (
                    time.monotonic() < deadline
                    and self.run(
                        "squeue", "-h", "-t", "R,CG", "-o", "%i", check=False, timeout=10
                    ).stdout.strip()
                ):
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            if path.is_file():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

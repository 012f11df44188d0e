"""A real one-node Slurm cluster in a temporary folder, for the tests of ``hydra/launcher=slurm``.

It installs nothing: it uses Debian's ``slurm-wlm`` and ``munge`` where they are installed
(``apt-get install slurm-wlm munge``; ``.ci/run`` does that when it runs as root) and writes
everything it needs (munge key and socket, ``slurm.conf``, state, spool, logs) under one
folder, on ports of its own, so that it neither reads nor disturbs a Slurm the machine
may already run. ``stop()`` ends exactly the three daemons it started.

Clients find it through ``SLURM_CONF`` (``cluster.env``): pass that environment to
``normbench train -m hydra/launcher=slurm ...`` and to ``squeue``/``scontrol``.

Slurm holds a requeued job for two minutes (its ``BeginTime``) before it may start again;
with ``fast_requeue`` (the default) a thread lets such a job start at once
(``scontrol update StartTime=now``), as an idle cluster would, so that the tests of
preemption and time limits take seconds rather than minutes.

By hand, to try the README's commands on one machine::

    python tests/slurm_cluster.py /tmp/slurm   # prints the export line, Ctrl-C stops it
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
HOW_TO_ENABLE = "apt-get install slurm-wlm munge, and run the tests as root"


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    missing = [d for d in DAEMONS + ("sbatch", "squeue", "scontrol", "sinfo") if not shutil.which(d, path=_PATH)]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing): {HOW_TO_ENABLE}"
    if os.geteuid() != 0:
        return f"slurmd must run as root to start jobs: {HOW_TO_ENABLE}"
    return None


_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmError(RuntimeError):
    """The cluster did not come up; the message holds the daemons' last log lines."""


class SlurmCluster:
    """One controller and one node (this machine, ``cpus`` CPUs) in ``root``."""

    def __init__(self, root: Path, cpus: int | None = None, memory_mb: int = 8000, fast_requeue: bool = True) -> None:
        self.root = Path(root)
        self.fast_requeue = fast_requeue
        self._stop = threading.Event()
        self._popen: dict[str, subprocess.Popen] = {}  # the daemons this object started, in order
        self._logs: list = []
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = memory_mb
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a client of this cluster (sbatch, squeue, submitit)."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": _PATH}

    def run(self, *cmd: str, check: bool = True) -> str:
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and out.returncode:
            raise SlurmError(f"{' '.join(cmd)}: {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout

    def _write_config(self) -> None:
        r = self.root
        for sub in ("state", "spool", "munge"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        (r / "munge").chmod(0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        # Every path and port is this cluster's own; accounting is off (as on many small
        # clusters: submitit then cannot read job states from sacct, which the tests cover).
        self.conf.write_text(f"""\
ClusterName=normbench
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=5
MinJobAge=600
InactiveLimit=0
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")

    def _start(self, name: str, *args: str) -> None:
        # -D: in the foreground, so that the pid is the daemon's own and stop() ends exactly it.
        log = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - open while the daemon runs
        self._logs.append(log)
        self._popen[name] = subprocess.Popen([shutil.which(name, path=_PATH) or name, *args], env=self.env,
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, timeout_s: float = 60) -> SlurmCluster:
        """Start munge, the controller and the node; return once ``sinfo`` shows it idle. If it
        does not come up, whatever was started is stopped again and ``SlurmError`` says why."""
        self._write_config()
        m = self.root / "munge"
        try:
            self._start("munged", "--foreground", "--force", f"--socket={m}/munge.socket",
                        f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                        f"--seed-file={m}/munged.seed")
            self._wait(lambda: (m / "munge.socket").exists(), 10, "munged did not create its socket")
            self._start("slurmctld", "-D", "-i", "-f", str(self.conf))
            self._start("slurmd", "-D", "-f", str(self.conf), "-N", self.host)
            self._wait(self.idle, timeout_s, "the node did not become idle")
        except BaseException:
            self.stop()
            raise
        if self.fast_requeue:
            threading.Thread(target=self._release_requeued, daemon=True).start()
        return self

    def _release_requeued(self) -> None:
        while not self._stop.wait(0.5):
            out = subprocess.run(["squeue", "--noheader", "--array", "--states=PENDING", "--format=%i %r"],
                                 env=self.env, capture_output=True, text=True)
            for line in out.stdout.splitlines():
                job, _, reason = line.partition(" ")
                if reason.strip() == "BeginTime":
                    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=self.env,
                                   capture_output=True)

    def idle(self) -> bool:
        for name, proc in self._popen.items():
            if proc.poll() is not None:
                raise SlurmError(f"{name} exited with {proc.returncode}: {self._tail(name)}")
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc")

    def _tail(self, name: str) -> str:
        lines: list[str] = []
        for path in (self.root / f"{name}.log", self.root / f"{name}.out", self.root / "munge" / "munged.log"):
            if path.exists() and (name in path.name):
                lines += path.read_text(errors="replace").splitlines()[-5:]
        return " | ".join(lines)

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                raise SlurmError(f"{what} in {timeout_s:.0f} s: {self._tail('slurmctld')} {self._tail('slurmd')}")
            time.sleep(0.3)

    def stop(self) -> None:
        """End the jobs still on the cluster and the daemons this object started (in reverse order)."""
        self._stop.set()
        if "slurmctld" in self._popen:
            subprocess.run(["scancel", "--full", "--user", str(os.geteuid())], env=self.env, capture_output=True,
                           timeout=30)
        for proc in reversed(list(self._popen.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._popen.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    import sys

    reason = unavailable()
    if reason:
        sys.exit(reason)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill, like Ctrl-C, stops the daemons too
    with SlurmCluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/normbench-slurm")) as cluster:
        print(f"export SLURM_CONF={cluster.conf}\n(Ctrl-C stops the cluster)", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass

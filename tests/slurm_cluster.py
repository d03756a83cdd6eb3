"""A one-node SLURM cluster in a temporary folder, for tests/test_slurm.py.

Debian's ``slurm-wlm`` and ``munge`` (installed with apt-get when missing, as root): ``munged``
as user munge with a key made here, ``slurmctld -D`` and ``slurmd -D`` with a ``slurm.conf`` of
their own (free ports, state, spool and logs in the folder, this machine's hostname, 2 CPUs).
:meth:`OneNodeCluster.stop` cancels the jobs and stops every process it started, also after a
failure. Where the cluster cannot run (not root, no apt-get, a daemon that does not come up),
:class:`ClusterUnavailable` says why in one line, and the test skips with it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("munge", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"


class ClusterUnavailable(RuntimeError):
    """The cluster cannot run on this machine; the message is the reason, in one line."""


def _program(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN)


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt-get (root) when a program of theirs is missing."""
    missing = [name for name in DAEMONS + CLIENTS if _program(name) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ClusterUnavailable(f"{', '.join(missing)} missing and no root apt-get to install")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
    ):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ClusterUnavailable(f"`{' '.join(cmd)}` failed: {tail}")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class OneNodeCluster:
    """``start()`` brings the cluster up; ``env()`` is the environment its clients need."""

    def __init__(self, root: Path, cpus: int = 2) -> None:
        self.root, self.cpus = Path(root), cpus
        self.conf = self.root / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.daemons: list[tuple[str, subprocess.Popen]] = []
        self.munge_dir: Path | None = None

    def env(self, **extra: str) -> dict[str, str]:
        path = os.pathsep.join(p for p in (os.environ.get("PATH"), SBIN) if p)
        return {**os.environ, "PATH": path, "SLURM_CONF": str(self.conf), **extra}

    def run(self, *cmd: str, check: bool = True) -> str:
        """A client command (sbatch, scontrol ...) against this cluster; returns its stdout."""
        done = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=60)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def node_state(self) -> str:
        """The node's state as ``sinfo`` prints it (``idle``, ``allocated``, ``completing`` ...)."""
        return self.run("sinfo", "-h", "-n", self.host, "-o", "%T", check=False).strip()

    def job(self, job_id: str) -> dict[str, str]:
        """The ``key=value`` fields of ``scontrol show job`` (JobState, Restarts, ExitCode ...)."""
        return dict(re.findall(r"(\w+)=(\S*)", self.run("scontrol", "-o", "show", "job", job_id)))

    # -- start ----------------------------------------------------------------------------------
    def start(self) -> None:
        if os.geteuid() != 0:
            raise ClusterUnavailable("not root (slurmd must run as root)")
        ensure_installed()
        try:
            socket.gethostbyname(self.host)
        except OSError:
            msg = f"this machine's hostname {self.host!r} does not resolve"
            raise ClusterUnavailable(msg) from None
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        socket_path = self._start_munge()
        ctld_port, node_port = _free_ports(2)
        (self.root / "plugstack.conf").write_text("")  # none of /etc/slurm's SPANK plugins
        r = self.root
        self.conf.write_text(
            f"""ClusterName=sanettest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={node_port}
AuthType=auth/munge
AuthInfo=socket={socket_path}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
PlugStackConfig={r}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=30
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""
        )
        self._spawn("slurmctld", [_program("slurmctld"), "-D", "-f", str(self.conf)])
        self._spawn("slurmd", [_program("slurmd"), "-D", "-f", str(self.conf), "-N", self.host])
        self._wait_until_idle(timeout=60)

    def _start_munge(self) -> Path:
        # munged runs as user munge and refuses a socket under a folder it cannot traverse
        # (pytest's tmp_path is root's 0700), so its files live in a folder of their own.
        try:
            munge = pwd.getpwnam("munge")
        except KeyError:
            raise ClusterUnavailable("no user 'munge' (the munge package creates it)") from None
        self.munge_dir = Path(tempfile.mkdtemp(prefix="sanet-munge-"))
        d = self.munge_dir
        os.chmod(d, 0o755)
        os.chown(d, munge.pw_uid, munge.pw_gid)
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        os.chown(key, munge.pw_uid, munge.pw_gid)
        sock = d / "munge.socket"
        cmd = [_program("munged"), "-F", f"--socket={sock}", f"--key-file={key}"]
        cmd += [f"--pid-file={d / 'munged.pid'}", f"--seed-file={d / 'munged.seed'}"]
        self._spawn("munged", cmd, user=munge)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [_program("munge"), "-n", "-S", str(sock)], capture_output=True, timeout=10
            )
            if probe.returncode == 0:
                return sock
            self._check_alive()
            time.sleep(0.2)
        raise ClusterUnavailable(f"munged gave no credential in 20 s: {self._last_error('munged')}")

    def _spawn(self, name: str, cmd: list, user: pwd.struct_passwd | None = None) -> None:
        ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        with open(self.root / "log" / f"{name}.out", "wb") as log:  # the daemon keeps its copy
            proc = subprocess.Popen(
                [str(c) for c in cmd],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **ids,
            )
        self.daemons.append((name, proc))

    def _wait_until_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if self.node_state().startswith("idle"):
                return
            time.sleep(0.5)
        raise ClusterUnavailable(
            f"node {self.host} not idle after {timeout:.0f} s: {self._last_error('slurmd')}"
        )

    def _check_alive(self) -> None:
        for name, proc in self.daemons:
            if proc.poll() is not None:
                raise ClusterUnavailable(
                    f"{name} exited {proc.returncode}: {self._last_error(name)}"
                )

    def _last_error(self, name: str) -> str:
        """The last error line (else the last line) that daemon ``name`` wrote."""
        lines: list[str] = []
        for path in (self.root / "log" / f"{name}.out", self.root / "log" / f"{name}.log"):
            if path.is_file():
                lines += [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        return (errors or lines or ["no output"])[-1]

    # -- stop -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel the jobs, end what they left running, stop the daemons, remove munge's folder."""
        asked = set()
        if any(name == "slurmctld" and p.poll() is None for name, p in self.daemons):
            jobs = self.run("squeue", "-h", "-o", "%i", check=False).split()
            if jobs:
                self.run("scancel", *jobs, check=False)
            deadline = time.monotonic() + 60
            while jobs and time.monotonic() < deadline:
                jobs = self.run("squeue", "-h", "-o", "%i", check=False).split()
                time.sleep(0.5)
            # both daemons at once: SIGTERM to slurmctld alone can leave it waiting on slurmd
            self.run("scontrol", "shutdown", check=False)
            asked = {"slurmctld", "slurmd"}
        for name, proc in reversed(self.daemons):  # slurmd, slurmctld, then munged
            try:
                proc.wait(timeout=10 if name in asked else 0)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self.daemons.clear()
        self._kill_job_processes()  # after the daemons: slurmctld's own helper carries our conf too
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
            self.munge_dir = None

    def _kill_job_processes(self) -> None:
        """SIGKILL what this cluster's jobs left: processes whose environment names our conf
        (slurmstepd and the job's processes inherit SLURM_CONF). Called once the daemons are gone."""
        mine = f"SLURM_CONF={self.conf}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if mine in environ:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)

"""A real SLURM cluster (one host) and a real PostgreSQL server for the `cluster` tests.

Each server lives under its own root_dir (config, state, sockets, logs), listens on free ports, so
it never meets a system SLURM or PostgreSQL, and runs its daemons in the foreground as our children
so that stop() can kill them by pid. Missing Debian packages are installed with apt-get (as root).
Every wait has a timeout and fails with the tails of the daemons' logs.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"


class DaemonError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_packages(binaries: dict[str, str], timeout: float = 900) -> None:
    """apt-get install the packages of the binaries ({binary: package}) not on PATH or in /usr/sbin."""
    missing = sorted({pkg for binary, pkg in binaries.items() if not _which(binary)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise DaemonError(f"need root to apt-get install {missing}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise DaemonError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr}")


def _which(binary: str) -> str | None:
    found = glob.glob(binary) if "*" in binary else []  # a glob: /usr/lib/postgresql/*/bin/initdb
    return max(found) if found else shutil.which(binary, path=f"{os.environ.get('PATH', '')}:{SBIN}")


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it if pytest dies without tearing down (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class _Daemons:
    """Foreground daemons started by us: their Popen, their log; stop() kills them by pid."""

    def __init__(self, root_dir: str | os.PathLike):
        self.root = Path(root_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs: list[Path] = []  # every log file worth showing on a failure
        self._procs: list[tuple[str, subprocess.Popen]] = []

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None, **popen) -> subprocess.Popen:
        out = self.root / "log" / f"{name}.out"
        out.parent.mkdir(exist_ok=True)
        self.logs.append(out)
        with open(out, "ab") as f:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, preexec_fn=_die_with_parent, **popen)
        self._procs.append((name, proc))
        return proc

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs if proc.poll() is None}

    def log_tails(self, lines: int = 30) -> str:
        tails = {p: p.read_text(errors="replace").splitlines()[-lines:] for p in self.logs if p.exists()}
        return "".join(f"\n--- {p} ---\n" + "\n".join(tail) for p, tail in tails.items())

    def wait_for(self, what: str, check, timeout: float, interval: float = 0.2):
        """Poll check() until it returns something true; raise with the logs on a timeout or a dead daemon."""
        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self._procs:
                if proc.poll() is not None:
                    raise DaemonError(f"{name} (pid {proc.pid}) exited with {proc.returncode} while waiting for "
                                      f"{what}{self.log_tails()}")
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise DaemonError(f"timed out after {timeout}s waiting for {what}{self.log_tails()}")
            time.sleep(interval)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Signal our daemons in reverse start order and wait; SIGKILL whoever outlives the timeout."""
        for _, proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._procs.clear()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


# No accounting here, so the real sacct fails ("Slurm accounting storage is disabled"); submitit, which
# polls `sacct -o JobID,State,NodeList --parsable2 -j ID ...`, then reads every job as UNKNOWN and waits
# forever for one that ends without a result file (cancelled, killed). This stand-in answers that call
# from squeue, which keeps ended jobs for MinJobAge.
SACCT_SHIM = r"""#!/bin/sh
ids=""
while [ $# -gt 0 ]; do [ "$1" = -j ] && ids="$ids $(echo "$2" | tr , ' ')" && shift; shift; done
echo "JobID|State|NodeList"
squeue -h --states=all -o '%i|%T|%N' | while IFS='|' read -r id rest; do
  case " $ids " in *" ${id%%_*} "*) echo "$id|$rest" ;; esac
done
"""


class SlurmCluster(_Daemons):
    """munged + slurmctld + slurmd (one per node: SLURM's multiple-slurmd mode for nodes > 1, nodes
    node1..nodeN on this host; one node is named after the host).

    Each node declares `cpus_per_node` CPUs whatever the machine has (SlurmdParameters=config_overrides
    keeps slurmd from draining it for that), so several jobs and tasks fit on a 2-core machine, and
    `gpus_per_node` fake GPUs (GRES backed by plain files: SLURM_GPUS_ON_NODE is set, CUDA_VISIBLE_DEVICES
    is not), so jobs may ask --gpus-per-node. No accounting: sacct fails. A requeued job starts again
    after cred_expire=10 s (SLURM's default: 120 s).
    """

    # slurmctld + slurmd + slurm-client: what the slurm-wlm metapackage installs, without its 30-odd plugins
    BINARIES = {"munged": "munge", "munge": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd",
                "sbatch": "slurm-client", "sinfo": "slurm-client"}

    def __init__(self, root_dir, nodes: int = 1, cpus_per_node: int = 8, gpus_per_node: int = 0,
                 name: str = "segsweep"):
        super().__init__(root_dir)
        self.nodes, self.cpus_per_node, self.gpus_per_node, self.name = nodes, cpus_per_node, gpus_per_node, name
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        host = socket.gethostname()
        self.node_names = [host] if nodes == 1 else [f"node{i}" for i in range(1, nodes + 1)]

    def env(self, sacct: bool = False) -> dict[str, str]:
        """os.environ without a surrounding job's SLURM_* variables, with our SLURM_CONF and /usr/sbin on PATH.
        sacct=True puts SACCT_SHIM first on PATH: submitit then sees jobs end that leave no result file."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        path = f"{self.root / 'bin'}:" * sacct + f"{env.get('PATH', '')}:{SBIN}"
        return {**env, "SLURM_CONF": str(self.conf), "PATH": path}

    def run(self, *cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command (sbatch, squeue, ...) against this cluster."""
        done = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            raise DaemonError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done

    def start(self) -> SlurmCluster:
        ensure_packages(self.BINARIES)
        for sub in ("munge", "state", "spool", "log", "run", "bin"):
            (self.root / sub).mkdir(exist_ok=True)
        (self.root / "bin" / "sacct").write_text(SACCT_SHIM)
        (self.root / "bin" / "sacct").chmod(0o755)
        os.chmod(self.root / "munge", 0o755)  # munged wants its socket dir reachable by all
        m = self.root / "munge"
        key = m / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn("munged", [_which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"])
        self.wait_for("munged's socket", self._munge_ok, timeout=20)
        self._write_conf()
        self.logs.append(self.root / "log" / "slurmctld.log")
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-f", str(self.conf)], env=self.env())
        self.wait_for("slurmctld to answer", lambda: self.run("scontrol", "ping", check=False,
                                                               timeout=10).stdout.count("UP"), timeout=30)
        for node in self.node_names:
            (self.root / "spool" / f"slurmd-{node}").mkdir(exist_ok=True)
            self.logs.append(self.root / "log" / f"slurmd-{node}.log")
            self._spawn(f"slurmd-{node}", [_which("slurmd"), "-D", "-f", str(self.conf),
                                            *(["-N", node] if self.nodes > 1 else [])], env=self.env())
        return self

    def _munge_ok(self) -> bool:
        if not self.munge_socket.exists():
            return False
        cred = subprocess.run(["munge", "-n", "-S", str(self.munge_socket)], capture_output=True, timeout=10)
        return cred.returncode == 0 and subprocess.run(
            ["unmunge", "-S", str(self.munge_socket)], input=cred.stdout, capture_output=True, timeout=10
        ).returncode == 0

    def _write_conf(self) -> None:
        real = dict(kv.split("=", 1) for kv in subprocess.run(
            [_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout.split() if "=" in kv)
        r, host = self.root, socket.gethostname()
        nodes = "\n".join(
            f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} CPUs={self.cpus_per_node} "
            f"Boards=1 SocketsPerBoard=1 CoresPerSocket={self.cpus_per_node} ThreadsPerCore=1 "
            f"RealMemory={real.get('RealMemory', 1000)} State=UNKNOWN"
            + (f" Gres=gpu:{self.gpus_per_node}" if self.gpus_per_node else "") for n in self.node_names)
        # Fake GPUs, plain files standing for /dev/nvidia<k>: lets jobs ask --gpus-per-node on a machine without any.
        fake = self.root / "dev"
        fake.mkdir(exist_ok=True)
        for k in range(self.gpus_per_node):
            (fake / f"gpu{k}").touch()
        (self.root / "gres.conf").write_text("".join(
            f"NodeName={n} Name=gpu File={fake}/gpu[0-{self.gpus_per_node - 1}]\n"
            for n in self.node_names if self.gpus_per_node))
        self.conf.write_text(f"""\
ClusterName={self.name}
{"GresTypes=gpu" if self.gpus_per_node else "# no GresTypes: no GPUs"}
SlurmctldHost={host}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/slurmd-%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=600
KillWait=5
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def wait_ready(self, timeout: float = 60) -> SlurmCluster:
        """Wait until every node is idle; fail at once on a down or drained node (with its reason)."""

        def ready():
            out = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False, timeout=10).stdout
            states = dict(line.split()[:2] for line in out.splitlines() if len(line.split()) == 2)
            bad = {n: s for n, s in states.items() if s.rstrip("*").startswith(("down", "drain", "fail", "inval"))}
            if bad and not any(s == "unknown" for s in states.values()):
                reason = self.run("sinfo", "-h", "-R", check=False, timeout=10).stdout
                raise DaemonError(f"nodes not usable: {bad} {reason}{self.log_tails()}")
            return sorted(states) == sorted(self.node_names) and all(s == "idle" for s in states.values())

        self.wait_for(f"sinfo to show {self.node_names} idle", ready, timeout)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Cancel the jobs, kill the processes that still run with our SLURM_CONF (slurmstepd, job steps:
        slurmd double-forks them), then the daemons."""
        if self.pids().get("slurmctld"):
            self.run("scancel", "--full", "--partition=debug", check=False, timeout=20)
            with contextlib.suppress(DaemonError):  # what remains is killed below
                self.wait_for("the jobs to end", lambda: not self.run(
                    "squeue", "-h", check=False, timeout=10).stdout.strip(), timeout=20)
        super().stop(sig, timeout)
        leftovers = _pids_with_env(f"SLURM_CONF={self.conf}") - {os.getpid()}
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.wait_for("killed job processes to end", lambda: not _pids_with_env(f"SLURM_CONF={self.conf}") & leftovers,
                      timeout=10)


def _pids_with_env(entry: str) -> set[int]:
    found = set()
    for environ in glob.glob("/proc/[0-9]*/environ"):
        try:
            if entry.encode() in Path(environ).read_bytes().split(b"\0"):
                found.add(int(environ.split("/")[2]))
        except OSError:
            pass
    return found


class PostgresServer(_Daemons):
    """initdb + postgres on 127.0.0.1:<free port>, run as the unprivileged `postgres` user (or as us if we
    are not root); trust authentication; url() is a SQLAlchemy URL of the database `dbname`."""

    def __init__(self, root_dir, dbname: str = "segsweep", user: str = "postgres"):
        super().__init__(root_dir)
        self.dbname, self.port = dbname, free_port()
        self.user = user if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.data, self.sockets = self.root / "data", self.root / "sockets"
        self.bin: Path | None = None

    def url(self, driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    def start(self) -> PostgresServer:
        ensure_packages({"/usr/lib/postgresql/*/bin/initdb": "postgresql"})
        self.bin = Path(_which("/usr/lib/postgresql/*/bin/initdb")).parent
        as_user = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.user)
            as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            _let_traverse(self.root)  # pytest's tmp dirs are 0700: postgres needs o+x on them
            for d in (self.root, self.root / "log"):
                d.mkdir(exist_ok=True)
                os.chown(d, pw.pw_uid, pw.pw_gid)
        env = {**os.environ, "LC_ALL": "C", "HOME": str(self.root)}
        init = subprocess.run([self.bin / "initdb", "-D", self.data, "-U", self.user, "-A", "trust", "-E", "UTF8",
                               "--no-locale", "--no-sync"], env=env, capture_output=True, text=True, timeout=120,
                              **as_user)
        if init.returncode:
            raise DaemonError(f"initdb failed ({init.returncode}): {init.stdout}{init.stderr}")
        self.sockets.mkdir(exist_ok=True)
        if as_user:
            os.chown(self.sockets, as_user["user"], as_user["group"])
        self._spawn("postgres", [self.bin / "postgres", "-D", self.data, "-p", str(self.port), "-k", self.sockets,
                                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
                    env=env, **as_user)
        ping = [self.bin / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user]
        self.wait_for("postgres to accept connections",
                      lambda: subprocess.run(ping, timeout=10).returncode == 0, timeout=60)
        made = subprocess.run([self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                               self.dbname], capture_output=True, text=True, timeout=60)
        if made.returncode:
            raise DaemonError(f"createdb failed: {made.stderr}{self.log_tails()}")
        return self

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> None:
        super().stop(sig, timeout)  # SIGINT: PostgreSQL's fast shutdown


def _let_traverse(path: Path) -> None:
    """Add o+x (search, not listing) to path and its ancestors that lack it, so another user reaches path."""
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & 0o001:
            p.chmod(mode | 0o001)

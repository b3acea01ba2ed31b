"""Start the benchmark's servers (a private redis-server and our store), read their CPU time.

Shared by ``bench_store`` and ``bench_api`` (which also installs wrk through ``ensure_apt``).

Every process started here is registered in a ``Processes`` set, which stops them all (SIGTERM,
then SIGKILL) on exit, including on Ctrl-C.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from storeserver.probe import wait_for_socket

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
ROOT = Path(__file__).resolve().parent.parent


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) seconds of process ``pid`` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK  # fields 14, 15 of stat(5)


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid``."""
    return sum(cpu_times(pid))


def children_cpu_seconds() -> float:
    """utime + stime of this process's waited-for children (e.g. a finished load generator)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (e.g. gunicorn's workers), from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:8]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / _CLK_TCK, sum(values) / _CLK_TCK


def machine_busy_fraction(seconds: float = 1.0) -> float:
    """Share of all cores busy (any process) over ``seconds``."""
    busy0, total0 = machine_cpu_seconds()
    time.sleep(seconds)
    busy1, total1 = machine_cpu_seconds()
    return (busy1 - busy0) / max(1e-9, total1 - total0)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


class Processes:
    """The child processes of one benchmark run; ``stop_all`` ends each of them by its pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(args, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def stop_all(self) -> None:
        while self.procs:
            self.stop(self.procs.pop())


def ensure_apt(package: str, *binaries: str) -> None:
    """Install ``package`` with apt when one of ``binaries`` is missing from PATH."""
    if all(shutil.which(b) for b in binaries):
        return
    print(f"{'/'.join(binaries)} missing: installing {package} with apt-get", flush=True)
    cmd = ["apt-get", "install", "-y", "-q", package]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    if not all(shutil.which(b) for b in binaries):
        raise RuntimeError(f"{', '.join(binaries)} still missing after apt-get install {package}")


def ensure_redis() -> None:
    """Install redis-server and redis-benchmark with apt when they are missing."""
    ensure_apt("redis-server", "redis-server", "redis-benchmark")


def start_redis(procs: Processes, tmp: Path) -> tuple[subprocess.Popen, Path]:
    sock = tmp / "redis.sock"
    args = ["redis-server", "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
    args += ["--save", "", "--appendonly", "no", "--dir", str(tmp), "--daemonize", "no"]
    log = open(tmp / "redis.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = procs.start(args, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    wait_for_socket(sock, proc=proc)
    return proc, sock


def start_store(procs: Processes, tmp: Path) -> tuple[subprocess.Popen, Path]:
    """``python -m storeserver`` on ``tmp/store.sock``, without persistence."""
    sock = tmp / "store.sock"
    env = {**os.environ, "STORE_LOG_LEVEL": "WARNING"}
    for key in ("STORE_DATA_DIR", "STORE_MAX_MEMORY", "STORE_SECRET", "STORE_TCP"):
        env.pop(key, None)
    log = open(tmp / "store.log", "wb")  # noqa: SIM115
    args = [sys.executable, "-m", "storeserver", "--socket", str(sock)]
    proc = procs.start(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    log.close()
    wait_for_socket(sock, proc=proc)
    return proc, sock


def run_collecting(
    prefix: str, collect: Callable[[Processes, Path], None], log: Callable[[str], None]
) -> bool:
    """Run ``collect(procs, tmp)`` with a process registry and a temporary directory, and stop
    every process and remove the directory whatever happens. Ctrl-C and SIGTERM end the run
    through the same cleanup (SIGINT is set explicitly: a shell starting us in the background
    would have it ignored). False when interrupted."""
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        collect(procs, tmp)
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        return False
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return True

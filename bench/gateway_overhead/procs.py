"""Child processes of the benchmark: start on a free port, wait until healthy, measure, always stop.

Each child runs in its own session (process group) so stopping it also stops anything it forked
(uvicorn workers); RSS and CPU time are summed over that process tree from /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def clean_environ() -> dict[str, str]:
    """This process's environment minus what would change a target's set-up (a database URL, DRAFTGATE_*)."""
    return {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("DRAFTGATE_")}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def rss_mib(pid: int) -> float:
    """Resident memory of the process tree, MiB."""
    total_kib = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process tree so far (all threads), seconds."""
    ticks = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


@dataclass
class Child:
    """One started process and where it listens."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


@dataclass
class Fleet:
    """Every process the benchmark started; `stop_all` ends them within a bounded time."""

    workdir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None,
              cpus: set[int] | None = None, cwd: Path | None = None) -> Child:
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("wb")

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**clean_environ(), **(env or {})},
                                 cwd=cwd, start_new_session=True, preexec_fn=pin)
        log.close()
        child = Child(name, popen, port, log_path)
        self.children.append(child)
        return child

    def wait_healthy(self, child: Child, path: str, timeout_s: float) -> float:
        """Seconds until GET `path` answered 200; RuntimeError (with the log's tail) otherwise."""
        started = time.monotonic()
        url = f"http://127.0.0.1:{child.port}{path}"
        while time.monotonic() - started < timeout_s:
            if child.popen.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{child.name} not healthy at {url} after {timeout_s:g}s:\n{child.log_tail()}")

    def stop_all(self, grace_s: float = 8.0) -> None:
        """SIGTERM to each process group, then SIGKILL to whatever is left after `grace_s`."""
        for child in self.children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for child in self.children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=2)
        self.children.clear()

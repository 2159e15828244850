"""Closed-loop load at a fixed concurrency with wrk (C, one event loop per thread), parsed from its Lua report.

wrk keeps exactly `connections` requests in flight; each response is checked in Lua (`wrk_chat.lua`):
status 200 and a marker every good body holds. Its latency percentiles are closed-loop (no
coordinated-omission correction): they say how long requests took at that concurrency, not at a
fixed arrival rate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from procs import CLOCK_TICKS, cpu_seconds

SCRIPT = Path(__file__).with_name("wrk_chat.lua")


@dataclass(frozen=True)
class LoadSpec:
    """One wrk run: where, what body, how many connections, for how long."""

    url: str
    body: bytes
    key: str
    marker: str
    connections: int
    duration_s: float


def available() -> str | None:
    """The wrk binary, if installed (`apt-get install -y wrk`)."""
    return shutil.which("wrk")


def version() -> str:
    binary = available()
    if binary is None:
        return "not installed"
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "?"


def _busy_ticks(cores: set[int]) -> int:
    """Non-idle jiffies of these CPUs so far (/proc/stat)."""
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name = line.split(" ", 1)[0]
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            values = [int(x) for x in line.split()[1:]]
            busy += sum(values) - values[3] - values[4]  # minus idle and iowait
    return busy


def run(spec: LoadSpec, *, cpus: set[int] | None, watch: dict[str, int],
        gateway_cores: set[int] | None = None) -> dict[str, object]:
    """Runs wrk once; returns its figures plus the CPU share each watched pid used meanwhile.

    With `gateway_cores`, also how busy those CPUs were in all (`cores_busy_pct`): anything above the
    gateway's own share is other work on the machine competing with it.
    """
    binary = available()
    if binary is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    env = {**os.environ, "WRK_BODY": spec.body.decode(), "WRK_KEY": spec.key, "WRK_MARKER": spec.marker}
    argv = [binary, "-t1", f"-c{spec.connections}", f"-d{max(1, round(spec.duration_s))}s", "--timeout", "10s",
            "-s", str(SCRIPT), spec.url]
    before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    busy_before = _busy_ticks(gateway_cores) if gateway_cores else 0

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, preexec_fn=pin)
    killer = threading.Timer(spec.duration_s + 60, proc.kill)  # bounded even if wrk hangs
    killer.start()
    try:
        assert proc.stdout is not None
        output = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: the load generator's CPU
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        killer.cancel()
        if proc.returncode is None:  # interrupted (signal, the run's time bound): never leave wrk behind
            proc.kill()
            proc.wait(timeout=5)
    line = next((ln for ln in output.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no report (rc {proc.returncode}): {output[-800:]}")
    raw: dict[str, float] = json.loads(line[len("WRKJSON "):])
    elapsed_s = raw["duration_us"] / 1e6
    cpu = {name: round(100 * (cpu_seconds(pid) - before[name]) / elapsed_s, 1) for name, pid in watch.items()}
    cpu["wrk"] = round(100 * (usage.ru_utime + usage.ru_stime) / elapsed_s, 1)
    if gateway_cores:
        cpu["cores_busy"] = round(100 * (_busy_ticks(gateway_cores) - busy_before) / CLOCK_TICKS / elapsed_s, 1)
    socket_errors = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
    failed = raw["bad_bodies"] + socket_errors  # bad_bodies already counts non-2xx answers
    attempted = raw["requests"] + raw["connect_errors"] + raw["timeouts"]
    good = raw["requests"] - raw["bad_bodies"]
    return {
        "connections": spec.connections,
        "duration_s": round(elapsed_s, 2),
        "requests": int(raw["requests"]),
        "good_rps": round(good / elapsed_s, 1),
        "errors": int(failed),
        "error_pct": round(100 * failed / attempted, 3) if attempted else 0.0,
        "non2xx": int(raw["non2xx"]),
        "socket_errors": {k: int(raw[k]) for k in ("connect_errors", "read_errors", "write_errors", "timeouts")},
        "p50_ms": round(raw["p50_us"] / 1000, 3),
        "p90_ms": round(raw["p90_us"] / 1000, 3),
        "p99_ms": round(raw["p99_us"] / 1000, 3),
        "max_ms": round(raw["max_us"] / 1000, 3),
        "cpu_pct": cpu,
    }

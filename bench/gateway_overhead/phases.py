"""The measurement phases: warm-up, sequential latency, wrk load per concurrency, and the soak."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import wrk
from client import Connection, Series, percentile, sequential
from procs import rss_mib
from targets import CHAT_PATH, MODEL, Target

MESSAGES = [{"role": "user", "content": "Say hello to the benchmark in a few words."}]
MODES = ("non_streaming", "streaming")


def body(stream: bool) -> bytes:
    """The request every path gets: a small chat, capped tokens; streams ask for the usage chunk."""
    payload: dict[str, object] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}
    if stream:
        payload |= {"stream": True, "stream_options": {"include_usage": True}}
    return orjson.dumps(payload)


def marker(stream: bool) -> str:
    return "[DONE]" if stream else '"choices"'


async def _c1(targets: list[Target], count: int, round_size: int) -> dict[str, dict[str, Series]]:
    """Sequential requests, interleaved in rounds across targets so drift hits every path alike."""
    out: dict[str, dict[str, Series]] = {m: {t.name: Series() for t in targets} for m in MODES}
    conns = {t.name: Connection("127.0.0.1", t.port, t.key) for t in targets}
    try:
        for mode in MODES:
            stream = mode == "streaming"
            payload = body(stream)
            for _ in range(max(1, count // round_size)):
                for target in targets:
                    await sequential(conns[target.name], CHAT_PATH, payload, stream, round_size,
                                     out[mode][target.name])
    finally:
        for conn in conns.values():
            await conn.close()
    return out


def run_c1(targets: list[Target], count: int, round_size: int = 20) -> dict[str, dict[str, dict[str, object]]]:
    """Latency (and TTFT for streams) at concurrency 1; `added_*` subtract the direct path's figure."""
    try:
        import uvloop

        series = uvloop.run(_c1(targets, count, round_size))
    except ImportError:
        series = asyncio.run(_c1(targets, count, round_size))
    result: dict[str, dict[str, dict[str, object]]] = {}
    for mode, by_target in series.items():
        rows: dict[str, dict[str, object]] = {}
        for name, s in by_target.items():
            totals = [x.total_ms for x in s.samples]
            row: dict[str, object] = {"n": len(totals), "errors": s.errors, "first_error": s.first_error}
            if totals:
                row |= {"p50_ms": round(statistics.median(totals), 3), "p99_ms": round(percentile(totals, 0.99), 3),
                        "mean_ms": round(statistics.fmean(totals), 3)}
            ttfts = [x.ttft_ms for x in s.samples if x.ttft_ms is not None]
            if ttfts:
                row |= {"ttft_p50_ms": round(statistics.median(ttfts), 3),
                        "ttft_p99_ms": round(percentile(ttfts, 0.99), 3)}
            rows[name] = row
        direct = rows.get("direct", {})
        for row in rows.values():
            for key in ("p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms"):
                if key in row and key in direct:
                    row[f"added_{key}"] = round(float(row[key]) - float(direct[key]), 3)  # type: ignore[arg-type]
        result[mode] = rows
    return result


def load_cell(target: Target, stream: bool, connections: int, duration_s: float, cpus: set[int] | None,
              watch: dict[str, int], gateway_cores: set[int] | None = None) -> dict[str, object]:
    spec = wrk.LoadSpec(url=target.url, body=body(stream), key=target.key, marker=marker(stream),
                        connections=connections, duration_s=duration_s)
    return wrk.run(spec, cpus=cpus, watch=watch, gateway_cores=gateway_cores)


def _combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Several interleaved rounds of one cell: median req/s and p99, errors summed, every round kept."""
    out = dict(rounds[len(rounds) // 2])
    for key in ("good_rps", "p50_ms", "p99_ms"):
        out[key] = round(statistics.median(float(r[key]) for r in rounds), 3)
    out["requests"] = sum(int(r["requests"]) for r in rounds)
    out["errors"] = sum(int(r["errors"]) for r in rounds)
    out["non2xx"] = sum(int(r["non2xx"]) for r in rounds)
    attempted = out["requests"] + sum(r["socket_errors"]["connect_errors"] + r["socket_errors"]["timeouts"]
                                      for r in rounds)
    out["error_pct"] = round(100 * out["errors"] / attempted, 3) if attempted else 0.0
    out["duration_s"] = round(sum(float(r["duration_s"]) for r in rounds), 2)
    out["cpu_pct"] = {k: round(statistics.median(float(r["cpu_pct"][k]) for r in rounds), 1)
                      for k in rounds[0]["cpu_pct"]}
    out["rounds"] = [{k: r[k] for k in ("good_rps", "error_pct", "p99_ms", "cpu_pct")} for r in rounds]
    return out


def run_load(targets: list[Target], upstream_pid: int, concurrencies: list[int], duration_s: float, rounds: int,
             cpus: set[int] | None, gateway_cores: set[int] | None,
             log: Callable[[str], None]) -> dict[str, dict[str, dict[str, object]]]:
    """wrk at each concurrency, each mode, each target; `rounds` rounds per cell, targets interleaved."""
    out: dict[str, dict[str, dict[str, object]]] = {m: {} for m in MODES}
    for mode in MODES:
        for c in concurrencies:
            runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
            for _ in range(rounds):
                for target in targets:
                    watch = {"upstream": upstream_pid}
                    if target.name != "direct":
                        watch["gateway"] = target.child.pid
                    runs[target.name].append(load_cell(target, mode == "streaming", c, duration_s / rounds, cpus,
                                                       watch, gateway_cores=gateway_cores))
            cell = {name: _combine(r) for name, r in runs.items()}
            for name, r in cell.items():
                log(f"  {mode:14s} c={c:<4d} {name:10s} {_short(r)}")
            out[mode][str(c)] = cell
    return out


def _short(r: dict[str, object]) -> str:
    return (f"{r['good_rps']:>9} req/s  err {r['error_pct']}%  p99 {r['p99_ms']} ms  cpu {r['cpu_pct']}")


def warm(targets: list[Target], duration_s: float, cpus: set[int] | None) -> None:
    """Connection pools, imports, caches, JITs of every path: a short burst per mode."""
    for target in targets:
        for stream in (False, True):
            load_cell(target, stream, 32, duration_s, cpus, {})


def soak(target: Target, total: int, connections: int, est_rps: float, cpus: set[int] | None,
         log: Callable[[str], None], segments: int = 10) -> dict[str, object]:
    """At least `total` requests (half streamed) in about `segments` timed slices; RSS after each slice."""
    slice_s = min(120.0, max(2.0, total / segments / max(est_rps, 1.0) / 2))
    samples = [{"requests": 0, "rss_mib": round(rss_mib(target.child.pid), 1)}]
    sent, errors, started = 0, 0, time.monotonic()
    while sent < total and len(samples) <= 3 * segments:
        for stream in (False, True):
            r = load_cell(target, stream, connections, slice_s, cpus, {})
            sent += int(r["requests"])  # type: ignore[call-overload]
            errors += int(r["errors"])  # type: ignore[call-overload]
        samples.append({"requests": sent, "rss_mib": round(rss_mib(target.child.pid), 1)})
        log(f"  soak {sent:>7d} requests  rss {samples[-1]['rss_mib']} MiB  errors {errors}")
    first, last = float(samples[0]["rss_mib"]), float(samples[-1]["rss_mib"])  # type: ignore[arg-type]
    after_first = float(samples[1]["rss_mib"])  # type: ignore[arg-type]
    return {"requests": sent, "errors": errors, "connections": connections,
            "seconds": round(time.monotonic() - started, 1), "samples": samples,
            "rss_growth_pct": round(100 * (last - first) / first, 2),
            "rss_growth_after_first_slice_pct": round(100 * (last - after_first) / after_first, 2)}


def ledger_rows(data_dir: Path, settle_s: float = 5.0) -> dict[str, object]:
    """Rows draftgate's SQLite ledger holds, by status (after giving the batched writer time to flush)."""
    db = data_dir / "ledger.db"
    counts: dict[str, int] = {}
    deadline = time.monotonic() + settle_s
    previous = -1
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            counts = {str(s): int(n) for s, n in conn.execute("SELECT status, COUNT(*) FROM requests GROUP BY status")}
        if sum(counts.values()) == previous:
            break
        previous = sum(counts.values())
        time.sleep(1.0)
    return {"rows": sum(counts.values()), "by_status": counts}

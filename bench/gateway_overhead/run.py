"""Gateway overhead, side by side in one run: direct, draftgate, LiteLLM proxy, a bare relay, one fake upstream.

    python bench/gateway_overhead/run.py [--quick] [--out bench/results/gateway_overhead.json] [--soak N]

Starts every process on free 127.0.0.1 ports, warms each path up, then measures latency at
concurrency 1 (a raw asyncio client, interleaved across paths), and req/s, errors and p99 at
concurrency 32 and 128 with wrk, non-streaming and streaming; RSS of each gateway before and after.
With two or more CPUs, the gateways are pinned to the first CPU and the upstream, wrk and this
runner to the others, so each gateway gets one whole core and the load side is measured apart.
Processes are always stopped (SIGTERM, then SIGKILL), and the whole run is bounded by --max-minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import phases
import report
import targets as paths
import wrk
from procs import Fleet, rss_mib

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parents[1] / "bench" / "results" / "gateway_overhead.json"


def log(message: str) -> None:
    print(message, flush=True)


def cpu_layout(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def ensure_litellm(venv: Path) -> str:
    """The proxy venv (built by setup_litellm.sh if missing); says how litellm got installed."""
    if not (venv / "bin" / "litellm").exists():
        log(f"building the LiteLLM proxy venv at {venv} (setup_litellm.sh)")
        subprocess.run(["bash", str(HERE / "setup_litellm.sh"), str(venv)], check=True, timeout=1800)
    probe = ("import importlib.metadata as m\nfor p in ('litellm','litellm-proxy-extras','fastapi','starlette',"
             "'uvicorn','uvloop','httptools','httpx'):\n    try: print(p, m.version(p))\n    except Exception: "
             "print(p, 'absent')")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=60)
    return out.stdout


def machine() -> dict[str, Any]:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "platform": f"{platform.system()} {platform.release()} "
            f"{platform.machine()}", "python": platform.python_version()}


def versions(litellm_probe: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("draftgate", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "httpx", "orjson"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    for line in litellm_probe.splitlines():
        name, _, ver = line.partition(" ")
        out[f"{name} (proxy venv)"] = ver
    out["wrk"] = wrk.version()
    return out


def setup_notes(args: argparse.Namespace, gw_cpus: set[int] | None, load_cpus: set[int] | None,
                litellm_probe: str) -> list[str]:
    pinned = (f"gateways pinned to CPU {sorted(gw_cpus)}; fake upstream, wrk and the runner to CPUs "
              f"{sorted(load_cpus or [])}" if gw_cpus else "no CPU pinning")
    extras = "absent" not in next((ln for ln in litellm_probe.splitlines() if ln.startswith("litellm-proxy-extras")),
                                  "absent")
    return [
        f"CPU layout: {pinned}. Each gateway runs one worker process (uvicorn, uvloop + httptools, no access log).",
        "draftgate: `draftgate serve --config <yaml>`; master key set, requests use a virtual key created with "
        "`draftgate keys create` (verified in the key store, cached for the default TTL), 3 policy rules evaluated "
        "per request (none matches), Prometheus metrics, SQLite ledger (WAL + journal), hosted alias "
        "`openai/gpt-4o-mini` at the fake upstream (direct shared-httpx transport), local engine disabled.",
        "LiteLLM: `litellm --config <yaml> --num_workers 1` from its own venv, same upstream, master key, no database, "
        "LITELLM_LOG=WARNING. " + ("Installed as litellm[proxy]==1.109.1." if extras else
        "litellm[proxy]==1.109.1 is not installable from PyPI (it pins litellm-proxy-extras==0.4.113 and "
        "litellm-enterprise==0.1.82, which PyPI does not carry): litellm==1.109.1 was installed with the proxy's "
        "requirements one by one (bench/gateway_overhead/setup_litellm.sh)."),
        "relay: bench/gateway_overhead/relay.py, Starlette + one shared httpx.AsyncClient, no auth, no checks.",
        "fake upstream: raw asyncio Protocol on uvloop, fixed 8-word answer; streams send 11 SSE events "
        "(role, 8 words, finish, usage) + [DONE], each its own write.",
        "Concurrency 1: a raw asyncio keep-alive client in this runner, requests interleaved across paths in rounds "
        f"of 20, {args.c1_requests} requests per path and mode; every answer validated. Added latency = path "
        "percentile minus the direct path's percentile. TTFT = time to the first non-empty content delta.",
        f"Load: wrk 4 (`-t1`, closed loop, --timeout 10s), {args.duration_s:g} s per path and cell in {args.rounds} "
        "interleaved round(s) (req/s and p99: median of the rounds; errors: summed) after a "
        f"{args.warm_s:g} s warm-up per path and mode; every response checked in Lua (status 200 and '\"choices\"' "
        "or '[DONE]' in the body); errors = bad answers + socket errors. CPU % of the gateway, the upstream and wrk "
        "itself is measured per cell (100% = one core) to show which side is saturated; `cores_busy` is how busy the "
        "gateway CPU was in all, so anything above the gateway's own share was other work on the machine.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short cells (3 s) and 200 sequential requests")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--soak", type=int, default=0, help="then send N requests to draftgate, RSS per slice")
    parser.add_argument("--litellm-venv", type=Path, default=Path("/tmp/litellm-proxy-venv"))
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--max-minutes", type=float, default=None, help="hard bound on the whole run")
    args = parser.parse_args()
    args.duration_s, args.rounds, args.warm_s, args.c1_requests = ((3.0, 1, 1.0, 200) if args.quick
                                                                   else (16.0, 2, 3.0, 1000))
    bound_s = int(60 * (args.max_minutes or (12 if args.quick else 25) + args.soak / 20_000))

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError(f"run exceeded its bound of {bound_s} s")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(bound_s)
    gw_cpus, load_cpus = cpu_layout(not args.no_pin)
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)
    if wrk.available() is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    workdir = Path(tempfile.mkdtemp(prefix="gateway-overhead-"))
    fleet = Fleet(workdir)
    ok = False
    try:
        result = measure(args, fleet, gw_cpus, load_cpus)
        ok = True
    finally:
        signal.alarm(0)
        fleet.stop_all()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs kept in {workdir}")
    write(result, args.out)


def measure(args: argparse.Namespace, fleet: Fleet, gw_cpus: set[int] | None,
            load_cpus: set[int] | None) -> dict[str, Any]:
    litellm_probe = ensure_litellm(args.litellm_venv)
    log("starting the fake upstream and the three gateways")
    direct = paths.start_upstream(fleet, load_cpus)
    upstream_port = direct.port
    gateways = [paths.start_draftgate(fleet, upstream_port, gw_cpus),
                paths.start_litellm(fleet, upstream_port, args.litellm_venv, gw_cpus),
                paths.start_relay(fleet, upstream_port, gw_cpus)]
    everything = [direct, *gateways]
    rss: dict[str, dict[str, float]] = {g.name: {"idle": round(rss_mib(g.child.pid), 1)} for g in gateways}
    log("warming up")
    phases.run_c1(everything, 40)
    phases.warm(everything, args.warm_s, load_cpus)
    for g in gateways:
        rss[g.name]["before"] = round(rss_mib(g.child.pid), 1)
    log("concurrency 1")
    vkey = paths.Target("draftgate_vkey", gateways[0].child, gateways[0].virtual_key or "")
    c1 = phases.run_c1([*everything, vkey], args.c1_requests)
    log("load with wrk")
    load = phases.run_load(everything, direct.child.pid, [32, 128], args.duration_s, args.rounds, load_cpus, gw_cpus,
                           log)
    for g in gateways:
        rss[g.name]["after"] = round(rss_mib(g.child.pid), 1)
    result: dict[str, Any] = {
        "what": "overhead of each gateway over calling a fake OpenAI-compatible upstream directly, one run",
        "mode": "quick" if args.quick else "full",
        "command": "python bench/gateway_overhead/run.py" + (" --quick" if args.quick else "")
                   + (f" --soak {args.soak}" if args.soak else ""),
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "versions": versions(litellm_probe),
        "setup": {"notes": setup_notes(args, gw_cpus, load_cpus, litellm_probe),
                  "startup_s": {t.name: round(t.start_s, 2) for t in everything}},
        "c1": c1, "load": load, "rss_mib": rss,
    }
    draftgate = gateways[0]
    if args.soak:
        log(f"soak: {args.soak} requests to draftgate")
        c32 = load["non_streaming"]["32"]["draftgate"], load["streaming"]["32"]["draftgate"]
        est_rps = (float(c32[0]["good_rps"]) + float(c32[1]["good_rps"])) / 2  # type: ignore[arg-type]
        result["soak"] = phases.soak(draftgate, args.soak, 32, est_rps, load_cpus, log)
    result["ledger"] = phases.ledger_rows(fleet.workdir / "draftgate-data")
    result["ratios"] = report.ratios(result)
    result["targets"] = report.targets(result)
    return result


def write(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = out.with_suffix(".md")
    md.write_text(report.markdown(result))
    log("")
    log(report.table(result))
    log("")
    for key, value in result["ratios"].items():
        log(f"{key}: {value}")
    log("")
    for t in result["targets"]:
        log(f"[{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['measured']}")
    log(f"\nwrote {out} and {md}")


if __name__ == "__main__":
    main()

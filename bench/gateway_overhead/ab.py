"""draftgate at another commit against this checkout, on the hosted path, side by side in one run.

Why: a change on the request path (the hosted relay, auth, the ledger writer) must not slow it, and this
machine's speed drifts more between runs than such a change costs; so both versions run at once, against one
fake upstream, with their requests interleaved (concurrency 1 in rounds of 20; wrk cells alternating), and the
figures to read are the ratios.

    python bench/gateway_overhead/ab.py --before 79d37fd --out bench/results/hosted_path_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import phases  # the script's folder is on sys.path, as for run.py
import targets as paths
from procs import Fleet
from run import cpu_layout

REPO = Path(__file__).resolve().parents[2]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the commit to compare with (checked out in a temp dir)")
    parser.add_argument("--c1-requests", type=int, default=1000)
    parser.add_argument("--duration-s", type=float, default=16.0, help="wrk seconds per version, cell and mode")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    before_sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", args.before], capture_output=True, text=True,
                                check=True).stdout.strip()
    after_sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                               check=True).stdout.strip()
    checkout = Path(tempfile.mkdtemp(prefix="draftgate-before-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(checkout / "src"), before_sha],
                   check=True, capture_output=True)
    gw_cpus, load_cpus = cpu_layout(True)
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)
    fleets = [Fleet(Path(tempfile.mkdtemp(prefix=f"ab-{n}-"))) for n in ("up", "before", "after")]
    try:
        upstream = paths.start_upstream(fleets[0], load_cpus)
        before = paths.start_draftgate(fleets[1], upstream.port, gw_cpus, "before",
                                       {"PYTHONPATH": str(checkout / "src")})
        after = paths.start_draftgate(fleets[2], upstream.port, gw_cpus, "after", {"PYTHONPATH": str(REPO)})
        versions = [before, after]
        log("warming up")
        phases.warm(versions, 3.0, load_cpus)
        log("concurrency 1")
        c1 = phases.run_c1([upstream, *versions], args.c1_requests)
        log("load")
        load = phases.run_load(versions, upstream.child.pid, [32], args.duration_s * args.rounds, args.rounds,
                               load_cpus, gw_cpus, log)
    finally:
        for fleet in fleets:
            fleet.stop_all()
            shutil.rmtree(fleet.workdir, ignore_errors=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkout / "src")],
                       capture_output=True)
        shutil.rmtree(checkout, ignore_errors=True)
    ratios: dict[str, float] = {}
    for mode, rows in c1.items():
        for key in ("added_p50_ms", "added_p99_ms", "added_ttft_p50_ms"):
            if key in rows["before"] and key in rows["after"] and float(rows["before"][key]):  # type: ignore[arg-type]
                ratios[f"{mode} c1 {key} after/before"] = round(
                    float(rows["after"][key]) / float(rows["before"][key]), 3)  # type: ignore[arg-type]
    for mode, cells in load.items():
        cell = cells["32"]
        ratios[f"{mode} c32 req/s after/before"] = round(
            float(cell["after"]["good_rps"]) / float(cell["before"]["good_rps"]), 3)  # type: ignore[arg-type]
    result = {"generated": datetime.now(UTC).isoformat(timespec="seconds"), "before": before_sha, "after": after_sha,
              "set_up": "one fake upstream, two `draftgate serve` (the same YAML as run.py: master key, 3 rules, SQLite "
                        "ledger, metrics, hosted alias on the direct transport), gateways pinned to one CPU, the "
                        "upstream, wrk and this runner to the other",
              "c1": c1, "load_c32": load, "ratios": ratios}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()

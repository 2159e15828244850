"""Where the engine's thread spends its time, per part, on `bench/engine.py`'s workload.

Runs the engine mode of `bench/engine.py` (same 48 held-out requests, closed loop, one torch thread)
at each concurrency with timers wrapped around the batch's parts: prompt encoder passes (admission),
decoder passes, the vectorised denoising step and its per-row random draws, dropping rows. Each
concurrency runs in a fresh process. The parts are nested (`denoise` includes `draw`; `step` includes
the decoder pass and `denoise`), so they are reported as shares of the wall time, not summed.

    python bench/engine_profile.py [--concurrency 1,8] [--out bench/results/engine_profile.json]
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS = {  # (object path, attribute) -> label
    ("batch.Batch", "_encode"): "encoder pass (prompts, canvas boundaries)",
    ("batch.Batch", "_decode"): "decoder pass",
    ("batch", "denoise"): "denoising step (vectorised)",
    ("denoise", "draw"): "per-row random draws (inside the denoising step)",
    ("batch.Batch", "step"): "tick: decoder pass + denoising step + commits",
    ("batch.Batch", "admit"): "admission: encoder pass + merge into the batch",
    ("batch.Batch", "drop"): "dropping finished rows",
}


def profile(concurrency: int, requests: int) -> dict[str, Any]:
    import engine as bench  # bench/engine.py

    import local_engine.batch
    import local_engine.denoise
    from local_engine.engine import DiffusionEngine
    from local_engine.loading import BUNDLED

    modules = {"batch": local_engine.batch, "denoise": local_engine.denoise}
    seconds: collections.defaultdict[str, float] = collections.defaultdict(float)
    calls: collections.Counter[str] = collections.Counter()
    for (where, name), label in PARTS.items():
        module, _, cls = where.partition(".")
        owner = getattr(modules[module], cls) if cls else modules[module]
        original = getattr(owner, name)

        def timed(*args: Any, _f: Any = original, _label: str = label, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                seconds[_label] += time.perf_counter() - started
                calls[_label] += 1

        setattr(owner, name, functools.wraps(original)(timed))
    warm_up = DiffusionEngine.generate

    async def generate(self: Any, request: Any) -> Any:
        out = await warm_up(self, request)
        if request.request_id == "warm-up":  # untimed in bench/engine.py: not counted here either
            seconds.clear()
            calls.clear()
        return out

    DiffusionEngine.generate = generate  # type: ignore[method-assign]
    result = bench.run_mode(f"c{concurrency}", BUNDLED, requests, 1)
    wall = result["wall_s"]
    return {"concurrency": concurrency, "wall_s": wall, "useful_tokens_per_s": result["useful_tokens_per_s"],
            "decoder_passes": result["decoder_passes"], "rows_per_pass": result["rows_per_pass"],
            "parts": {label: {"calls": calls[label], "ms_per_call": round(seconds[label] / calls[label] * 1000, 2),
                              "share_of_wall": round(seconds[label] / wall, 3)}
                      for label in PARTS.values() if calls[label]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(profile(args.one, args.requests)))
        return
    runs = []
    for c in (int(x) for x in args.concurrency.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(c), "--requests", str(args.requests)],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1], indent=1))
    if args.out:
        args.out.write_text(json.dumps({"method": "bench/engine.py's engine mode with timers around the batch's parts, "
                                                  "one fresh process per concurrency", "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()

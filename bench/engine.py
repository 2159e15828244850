"""The engine against plain `generate()`, side by side in one process and one run.

Same workload (mixed task-family prompts, held-out seeds) through:
  (a) plain model.generate(), one request at a time, the checkpoint's own generation config; request i
      runs after torch.manual_seed(i), the engine gets seed=i: the same random draws, so answers pair 1:1
  (b) one batched model.generate() per group of 8 (left padding + attention mask)
  (c) the engine, at concurrency 1, 4, 8, 16 (closed loop: each client sends its next request when served),
      with canvases fitted to each request (its default); and at concurrency 8 with every canvas as long as
      the checkpoint's (`c8 unfitted`: what fitting the canvas adds), and at concurrency 8 with the previous
      scheduler's batch-wide canvas boundaries (`c8 batch-wide boundaries`: what a row crossing its own
      canvas boundary adds)
Prints useful tokens/s (up to EOS, never padding), p50/p99 latency, decoder forward passes and rows per
pass, row passes per canvas, canvas positions computed per row pass, tokens per row pass (a request's own
signal) and per forward pass, RSS,
exact-match accuracy, and the ratios (c)/(a), (c)/(b). Every mode uses the same torch thread count.

    python bench/engine.py [--requests 48] [--threads 1] [--out bench/results/engine.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from local_engine.batch import Batch
from local_engine.engine import DiffusionEngine
from local_engine.interface import EngineConfig, GenerationRequest
from local_engine.loading import BUNDLED, LoadedModel, load_model
from local_engine.rows import RowState
from local_engine.training.evaluate import held_out
from local_engine.training.tasks import check


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class DecoderCounter:
    """Counts decoder forward passes of the plain-generate modes (a hook, no code changes)."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.calls = 0
        loaded.model.model.decoder.register_forward_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.calls += 1


def prompt_ids(loaded: LoadedModel, prompt: str) -> list[int]:
    text = loaded.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                tokenize=False)
    ids: list[int] = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def useful(loaded: LoadedModel, new: list[int]) -> list[int]:
    gen = loaded.model.generation_config
    cut = new.index(gen.eos_token_id) if gen.eos_token_id in new else len(new)
    return [t for t in new[:cut] if t != gen.pad_token_id]


def report(name: str, answers: list[str], expected: list[str], latencies: list[float], tokens: int, wall: float,
           passes: int, row_passes: int, canvases: int) -> dict[str, Any]:
    """`passes`: decoder forward calls; `row_passes`: rows computed, summed over them (equal at batch 1)."""
    return {"mode": name, "requests": len(answers), "useful_tokens": tokens, "wall_s": round(wall, 3),
            "useful_tokens_per_s": round(tokens / wall, 2), "p50_latency_s": round(pct(latencies, 0.5), 4),
            "p99_latency_s": round(pct(latencies, 0.99), 4), "decoder_passes": passes, "row_passes": row_passes,
            "rows_per_pass": round(row_passes / max(1, passes), 2),
            "passes_per_canvas": round(row_passes / max(1, canvases), 2),
            "tokens_per_pass": round(tokens / max(1, row_passes), 2),
            "tokens_per_forward": round(tokens / max(1, passes), 2),
            "accuracy": round(sum(check(a, e) for a, e in zip(answers, expected, strict=True)) / len(answers), 4),
            "rss_mb": round(rss_mb(), 1)}


def plain_sequential(loaded: LoadedModel, counter: DecoderCounter, work: list[tuple[str, str, str]]) -> dict[str, Any]:
    counter.calls, answers, latencies, tokens, canvases = 0, [], [], 0, 0
    started = time.perf_counter()
    for i, (_, prompt, _) in enumerate(work):
        t = time.perf_counter()
        torch.manual_seed(i)  # paired with the engine's request seed i: same draws, so answers compare 1:1
        ids = torch.tensor([prompt_ids(loaded, prompt)], device=loaded.device)
        out = loaded.model.generate(ids)
        seq = (out.sequences if hasattr(out, "sequences") else out)[0, ids.shape[1]:].tolist()
        canvases += len(seq) // loaded.model.config.canvas_length
        kept = useful(loaded, seq)
        tokens += len(kept)
        answers.append(loaded.tokenizer.decode(kept, skip_special_tokens=True))
        latencies.append(time.perf_counter() - t)
    return report("a: generate() sequential", answers, [w[2] for w in work], latencies, tokens,
                  time.perf_counter() - started, counter.calls, counter.calls, canvases)


def plain_batched(loaded: LoadedModel, counter: DecoderCounter, work: list[tuple[str, str, str]],
                  group: int = 8) -> dict[str, Any]:
    counter.calls, answers, latencies, tokens, canvases, row_passes = 0, [], [], 0, 0, 0
    pad = loaded.model.generation_config.pad_token_id
    started = time.perf_counter()
    for i in range(0, len(work), group):
        t = time.perf_counter()
        batch = [prompt_ids(loaded, p) for _, p, _ in work[i:i + group]]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(b)) + b for b in batch], device=loaded.device)
        mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch], device=loaded.device)
        calls = counter.calls
        out = loaded.model.generate(ids, attention_mask=mask)
        row_passes += (counter.calls - calls) * len(batch)  # generate() computes every row on every pass
        seqs = (out.sequences if hasattr(out, "sequences") else out)[:, width:].tolist()
        for seq in seqs:
            canvases += len(seq) // loaded.model.config.canvas_length
            kept = useful(loaded, seq)
            tokens += len(kept)
            answers.append(loaded.tokenizer.decode(kept, skip_special_tokens=True))
        latencies += [time.perf_counter() - t] * len(batch)  # every row waits for the whole group
    return report("b: generate() batched x8", answers, [w[2] for w in work], latencies, tokens,
                  time.perf_counter() - started, counter.calls, row_passes, canvases)


class BatchWideBoundaries(DiffusionEngine):
    """The scheduler before 2026-11-30 evening, for a side-by-side run: a row that goes on to another canvas
    waits until no row is denoising, when every row's canvas is encoded together, and arrivals wait while
    any row waits."""

    def _schedule(self, batch: Batch) -> None:
        batch.drop()
        if batch.members and all(r.state is RowState.BOUNDARY for r in batch.rows):
            batch.boundary()
        if all(r.state is not RowState.BOUNDARY for r in batch.rows):
            self._admit()
        if any(r.state is RowState.DENOISING for r in batch.rows):
            batch.step(self._converged)
        batch.drop()


async def engine_mode(loaded: LoadedModel, work: list[tuple[str, str, str]], concurrency: int,
                      threads: int | None, fitted: bool = True, first_canvas: int | None = None,
                      batch_wide: bool = False) -> dict[str, Any]:
    first = first_canvas if fitted else int(loaded.model.config.canvas_length)
    config = EngineConfig(max_batch_size=max(1, concurrency), max_queue=1024, max_tokens=256, threads=threads,
                          first_canvas_length=first)
    engine = (BatchWideBoundaries if batch_wide else DiffusionEngine)(loaded, config)
    await engine.start()
    await engine.generate(GenerationRequest(request_id="warm-up", seed=0,  # untimed, on the engine's own thread
                                            messages=[{"role": "user", "content": work[0][1]}]))
    pending = list(enumerate(work))
    answers: list[str] = [""] * len(work)
    latencies: list[float] = []
    stats = {"tokens": 0, "passes": 0, "canvases": 0}

    async def client() -> None:
        while pending:
            i, (_, prompt, _) = pending.pop(0)
            t = time.perf_counter()
            c = await engine.generate(GenerationRequest(request_id=f"r{i}", seed=i,
                                                        messages=[{"role": "user", "content": prompt}]))
            latencies.append(time.perf_counter() - t)
            answers[i] = c.text
            stats["tokens"] += c.completion_tokens
            stats["passes"] += sum(c.confidence.steps_per_canvas)
            stats["canvases"] += len(c.confidence.steps_per_canvas)

    before = (engine.stats.decoder_passes, engine.stats.row_passes, engine.stats.canvas_positions)
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    await engine.stop()
    passes, row_passes = engine.stats.decoder_passes - before[0], engine.stats.row_passes - before[1]
    positions = engine.stats.canvas_positions - before[2]
    assert row_passes == stats["passes"], "every row pass is one denoising step of one request"
    name = (f"c: engine concurrency {concurrency}" + ("" if fitted else ", canvases unfitted")
            + (", batch-wide boundaries" if batch_wide else ""))
    return {**report(name, answers, [w[2] for w in work], latencies, stats["tokens"], wall, passes, row_passes,
                     stats["canvases"]),
            "canvas_positions_per_row_pass": round(positions / max(1, row_passes), 2),
            "canvases_per_request": round(stats["canvases"] / len(work), 2)}


MODES = ["a", "b", "c1", "c4", "c8", "c16", "c8u", "c8w"]


def run_mode(mode: str, checkpoint: Path, requests: int, threads: int | None,
             first_canvas: int | None = None) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    loaded = load_model(EngineConfig(model=str(checkpoint)))
    work = held_out(requests // 6 + 1)[:requests]
    torch.set_grad_enabled(False)
    if mode in ("a", "b"):  # warm-up, untimed, in the thread that will do the work (engine: in engine_mode)
        loaded.model.generate(torch.tensor([prompt_ids(loaded, work[0][1])], device=loaded.device))
    if mode == "a":
        return plain_sequential(loaded, DecoderCounter(loaded), work)
    if mode == "b":
        return plain_batched(loaded, DecoderCounter(loaded), work)
    return asyncio.run(engine_mode(loaded, work, int(mode[1:].rstrip("uw")), threads, fitted=not mode.endswith("u"),
                                   first_canvas=first_canvas, batch_wide=mode.endswith("w")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for every mode (0 = torch's default); see the note in main()")
    parser.add_argument("--first-canvas", type=int, default=None,
                        help="engine modes: cap on a request's first canvas (a length the checkpoint was trained for)")
    parser.add_argument("--mode", choices=MODES, default=None, help="run one mode in this process (internal)")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.checkpoint, args.requests, args.threads or None, args.first_canvas)))
        return
    # Each mode runs in a fresh process, one after the other: torch's per-thread CPU thread pools left
    # behind by one mode measurably slow the next mode's thread down (seen here: up to 3x), which would
    # bias whichever mode runs second. Every mode runs with the same torch thread count: on a small
    # shared machine two OpenMP threads stall whenever another process holds a core (seen here: one
    # decoder pass 6 ms with one thread, 25-190 ms with two, under load), so one is the default.
    load_at_start = os.getloadavg()[0]
    modes = []
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--requests", str(args.requests),
                              "--checkpoint", str(args.checkpoint), "--threads", str(args.threads),
                              *(["--first-canvas", str(args.first_canvas)] if args.first_canvas else [])],
                             capture_output=True, text=True, check=True)
        modes.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(modes[-1]))
    a, b = modes[0], modes[1]
    c8 = next(m for m in modes if m["mode"].endswith("concurrency 8"))
    c8u = next(m for m in modes if m["mode"].endswith("canvases unfitted"))
    c8w = next(m for m in modes if m["mode"].endswith("batch-wide boundaries"))
    c1 = next(m for m in modes if m["mode"].endswith("concurrency 1"))
    ratios = {"c8_over_a_throughput": round(c8["useful_tokens_per_s"] / a["useful_tokens_per_s"], 2),
              "c8_over_b_throughput": round(c8["useful_tokens_per_s"] / b["useful_tokens_per_s"], 2),
              "c8_p99_over_c1_p50_latency": round(c8["p99_latency_s"] / c1["p50_latency_s"], 2),
              "c8_p99_over_c1_p99_latency": round(c8["p99_latency_s"] / c1["p99_latency_s"], 2),
              "c8_accuracy_minus_a": round(c8["accuracy"] - a["accuracy"], 4),
              "c8_over_c8_unfitted_throughput": round(c8["useful_tokens_per_s"] / c8u["useful_tokens_per_s"], 2),
              "c8_over_c8_batch_wide_boundaries_throughput": round(
                  c8["useful_tokens_per_s"] / c8w["useful_tokens_per_s"], 2),
              "c8_p99_over_c8_batch_wide_boundaries_p99": round(c8["p99_latency_s"] / c8w["p99_latency_s"], 2)}
    print(json.dumps(ratios))
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                         f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}",
              "checkpoint": str(args.checkpoint), "requests": args.requests, "torch_threads": args.threads or "default",
              "first_canvas": args.first_canvas,
              "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0]},
              "method": "each mode in a fresh process, sequentially, in one run", "modes": modes,
              "ratios": ratios, "peak_rss_mb": max(m["rss_mb"] for m in modes)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Trains the bundled tiny DiffusionGemma from scratch, deterministically, on CPU, in two stages:
single-turn task prompts (2,800 steps of 64), then 400 steps as apps send requests — half of them after
an app's system prompt (`--history-share` adds earlier exchanges too; the answer never depends on
either) — going on from the first stage's weights. About 20 minutes on 2 CPU cores (1,162 s for the
shipped checkpoint; a second full run, byte-identical, 1,259 s).
`--kind-weights` draws some task kinds more often than others (default: all alike; the weightings
measured so far cost more on the other kinds than they gained, `bench/results/tiny_model.md`).
`--canvas-lengths 4,8,16` trains the second stage for canvases fitted to the request (the engine's
`first_canvas_length`); not in the shipped recipe: on this CPU it was slower and the model worse
(`bench/results/engine.md`).

    python -m local_engine.training.train [--out DIR] [--steps 2800] [--system-steps 400] [--init-from DIR]"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.models.diffusion_gemma import (
    DiffusionGemmaForBlockDiffusion,
    DiffusionGemmaGenerationConfig,
)

from local_engine.rows import fit
from local_engine.training.config import CANVAS_LENGTH, GENERATION, tiny_config
from local_engine.training.objective import block_diffusion_loss
from local_engine.training.tasks import HELD_OUT_SEED_BASE, KINDS, messages_for, sample, sample_problem
from local_engine.training.tokenizer import build_tokenizer


def block_starts(length: int, canvas: int, canvas_lengths: tuple[int, ...]) -> list[int]:
    """Where a canvas of `canvas` tokens can start in an answer of `length` tokens (EOS included) when
    generation opens with any of `canvas_lengths` and then takes the shortest of them holding twice the
    last canvas, as the engine does (`rows.Row.next_canvas_length`): every start that schedule reaches."""
    starts = set()
    for first in canvas_lengths:
        start, size = 0, first
        while start < length:
            if size == canvas:
                starts.add(start)
            start, size = start + size, fit(canvas_lengths, 2 * size)
    return sorted(starts)


def encode_batch(tokenizer, seeds: list[int], system_share: float = 0.0,  # type: ignore[no-untyped-def]
                 history_share: float = 0.0, canvas: int = CANVAS_LENGTH,
                 canvas_lengths: tuple[int, ...] = (), blocks: random.Random | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded chat prompts (B, P) with their mask, and canvases (B, `canvas`): answer, EOS, padding.

    With `canvas_lengths` (and `blocks`, the stream that picks), a row's canvas is one block of its
    answer that the engine's canvas schedule can open (`block_starts`); the answer tokens before it join
    the clean prompt, as they sit in the KV cache at generation time."""
    samples = [sample(seed) for seed in seeds]
    # Rendering the chat template once per batch and tokenizing in one Rust call keeps data prep cheap.
    texts = [tokenizer.apply_chat_template(messages_for(seed, prompt, system_share, history_share),
                                           add_generation_prompt=True, tokenize=False)
             for seed, (_, prompt, _) in zip(seeds, samples, strict=True)]
    prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
    answers = tokenizer([answer for _, _, answer in samples], add_special_tokens=False)["input_ids"]
    targets = []
    for i, answer_ids in enumerate(answers):
        sequence = answer_ids[: CANVAS_LENGTH - 1] + [tokenizer.eos_token_id]
        start = 0
        if canvas_lengths and blocks is not None:
            start = blocks.choice(block_starts(len(sequence), canvas, canvas_lengths) or [0])
            prompts[i] = prompts[i] + sequence[:start]
        block = sequence[start:start + canvas]
        targets.append(block + [tokenizer.pad_token_id] * (canvas - len(block)))
    width = max(map(len, prompts))
    prompt_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return prompt_ids, prompt_mask, torch.tensor(targets)


def training_batches(steps: int, batch_size: int, seed: int,
                     kind_weights: dict[str, float] | None = None) -> Iterator[list[int]]:
    """The task seeds of every training step, in order: the one definition of what training saw.
    A seed's kind is drawn with probability proportional to its weight (default 1) by rejection from
    the same stream, so the sequence stays a pure function of (seed, weights)."""
    seeds = random.Random(seed)
    weights = [(kind_weights or {}).get(kind, 1.0) for kind in KINDS]
    top = max(weights)
    for _ in range(steps):
        batch: list[int] = []
        while len(batch) < batch_size:
            candidate = seeds.randrange(HELD_OUT_SEED_BASE)
            weight = weights[candidate % len(KINDS)]
            if weight >= top or seeds.random() < weight / top:
                batch.append(candidate)
        yield batch


def trained_problems(stages: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(kind, problem) of every example the training stages (each: steps, batch_size, seed and, when
    drawn unevenly, kind_weights) trained on."""
    return {(kind, problem) for stage in stages
            for batch in training_batches(stage["steps"], stage["batch_size"], stage["seed"],
                                          stage.get("kind_weights"))
            for kind, _, _, problem in map(sample_problem, batch)}


def prompt_chars(seed: int, system_share: float = 0.0, history_share: float = 0.0) -> int:
    """Characters of a sample's chat (system prompt and history included), the sort key of `length_chunks`."""
    return sum(len(m["content"]) for m in messages_for(seed, sample(seed)[1], system_share, history_share))


def length_chunks(seeds: list[int], chunks: int, system_share: float = 0.0,
                  history_share: float = 0.0) -> list[list[int]]:
    """The batch's seeds sorted by prompt length, cut into `chunks` pieces (padding costs encoder time)."""
    ordered = sorted(seeds, key=lambda s: (prompt_chars(s, system_share, history_share), s))
    size = math.ceil(len(ordered) / chunks)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


PERIODS = (2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
# The shipped checkpoint's. At 20 the arithmetic probe learns a sum's units digit, which it never does at 2.5,
# but the full recipe at 20 or 40 was no better at sums and worse in conversations (bench/results/tiny_model.md).
NUMBER_FEATURE_SCALE = 2.5


def init_number_embeddings(model: PreTrainedModel, tokenizer,  # type: ignore[no-untyped-def]
                           feature_scale: float = NUMBER_FEATURE_SCALE) -> None:
    """Starts every number token's embedding (tied: also its output row) from its value: sin/cos of
    value / period over PERIODS and the digit count, in the first dimensions, as Fourier number
    embeddings do. Sorting compares values and a sum is a rotation of these features, so the model
    does not have to discover what "37" means from co-occurrence alone; the rows still train.
    `feature_scale` is the features' size in standard deviations of the random start."""
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Embedding)
    weight = embeddings.weight
    scale = feature_scale * weight.std().item()
    with torch.no_grad():
        for token, index in tokenizer.get_vocab().items():
            if not token.isdigit():
                continue
            value = int(token)
            angles = torch.tensor([2 * math.pi * value / p for p in PERIODS])
            width = torch.nn.functional.one_hot(torch.tensor(len(token) - 1), 3).float()
            features = torch.cat([angles.sin(), angles.cos(), width])
            weight[index, : features.numel()] = scale * features


def train(out: Path, steps: int, batch_size: int, lr: float, seed: int, threads: int | None,
          chunks: int = 1, init_from: Path | None = None, system_share: float = 0.0,
          history_share: float = 0.0, kind_weights: dict[str, float] | None = None,
          canvas_lengths: tuple[int, ...] = (),
          number_feature_scale: float = NUMBER_FEATURE_SCALE) -> dict[str, Any]:
    """One training stage: from scratch, or on from `init_from` (whose stages the log keeps).

    `canvas_lengths` trains canvases of those lengths (each piece draws one, each row a block the
    engine's canvas schedule can open) instead of one canvas of CANVAS_LENGTH holding the whole
    answer; the checkpoint records them (`config.trained_canvas_lengths`) for the engine."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    tokenizer = build_tokenizer()
    previous: dict[str, Any] | None = None  # the training log of the checkpoint this stage goes on from
    if init_from is None:
        model = DiffusionGemmaForBlockDiffusion(tiny_config())
        init_number_embeddings(model, tokenizer, number_feature_scale)
    else:
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(init_from, dtype=torch.float32)
        previous = json.loads((init_from / "training_log.json").read_text())
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    generator = torch.Generator().manual_seed(seed)
    blocks = random.Random(seed + 1_000_003) if canvas_lengths else None  # its own stream: batches stay the same
    started, log = time.time(), []
    for step, batch in enumerate(training_batches(steps, batch_size, seed, kind_weights)):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        # Gradient accumulation over length-sorted pieces: the same gradient, less padding.
        for piece in length_chunks(batch, chunks, system_share, history_share):
            canvas = blocks.choice(canvas_lengths) if blocks is not None else CANVAS_LENGTH
            prompt_ids, prompt_mask, target = encode_batch(tokenizer, piece, system_share, history_share,
                                                           canvas, canvas_lengths, blocks)
            loss = block_diffusion_loss(model, prompt_ids, prompt_mask, target, generator=generator)
            (loss * len(piece) / len(batch)).backward()  # type: ignore[no-untyped-call]
            total += loss.item() * len(piece) / len(batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(total, 4), "elapsed_s": round(time.time() - started, 1)})
            print(json.dumps(log[-1]), flush=True)
    model.eval()  # type: ignore[no-untyped-call]
    model.generation_config = DiffusionGemmaGenerationConfig(**GENERATION)  # type: ignore[no-untyped-call]
    trained = sorted({*canvas_lengths, *(getattr(model.config, "trained_canvas_lengths", None) or ())})
    if trained:
        model.config.trained_canvas_lengths = trained
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stage = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "chunks": chunks,
             "system_share": system_share, "history_share": history_share,
             "kind_weights": kind_weights or None, "canvas_lengths": list(canvas_lengths) or None,
             "number_feature_scale": None if init_from else number_feature_scale,
             "init_from": "previous stage" if init_from else None,
             "wall_s": round(time.time() - started, 1), "final_loss": log[-1]["loss"]}
    stages = [*(stages_of(previous) if previous else []), stage]
    summary = {**stage, "stages": stages, "total_wall_s": round(sum(s["wall_s"] for s in stages), 1)}
    logs: dict[str, Any] = {"log": log}
    if previous:
        logs["earlier_logs"] = [*previous.get("earlier_logs", []), previous["log"]]
    (out / "training_log.json").write_text(json.dumps({"summary": summary, **logs}, indent=1) + "\n")
    return summary


def stages_of(training_log: dict[str, Any]) -> list[dict[str, Any]]:
    """Every stage a checkpoint's training log records (logs from before stages were recorded: one)."""
    summary = training_log["summary"]
    return list(summary.get("stages") or [summary])


def parse_weights(text: str) -> dict[str, float]:
    """`kind=weight,...` into a dict; unknown kinds and non-positive weights are errors."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, value = item.partition("=")
        if kind not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown task kind {kind!r}; kinds: {', '.join(KINDS)}")
        try:
            weights[kind] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {kind!r} is not a number: {value!r}") from None
        if not (weights[kind] > 0 and math.isfinite(weights[kind])):
            raise argparse.ArgumentTypeError(f"weight of {kind!r} must be a positive number")
    return weights


def parse_lengths(text: str) -> tuple[int, ...]:
    """`4,8,16` into (4, 8, 16): positive, and the longest is the checkpoint's canvas length."""
    try:
        lengths = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"canvas lengths must be integers: {text!r}") from None
    if lengths and (lengths[0] < 1 or lengths[-1] != CANVAS_LENGTH):
        raise argparse.ArgumentTypeError(f"canvas lengths must be positive and end at {CANVAS_LENGTH}: {text!r}")
    return lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "tiny-diffusiongemma")
    parser.add_argument("--steps", type=int, default=2800)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--chunks", type=int, default=1,
                        help="length-sorted pieces per batch (single-turn prompts are alike in length: one pass is cheaper)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="skip the first stage: go on from this checkpoint")
    parser.add_argument("--system-steps", type=int, default=400,
                        help="second stage: steps with system prompts and conversations (0: no second stage)")
    parser.add_argument("--system-share", type=float, default=0.5, help="second stage: share with a system prompt")
    parser.add_argument("--history-share", type=float, default=0.0,
                        help="second stage: share after 1-3 earlier exchanges (a conversation)")
    parser.add_argument("--system-lr", type=float, default=5e-4)
    parser.add_argument("--system-seed", type=int, default=1)
    parser.add_argument("--system-chunks", type=int, default=2,
                        help="second stage: length-sorted pieces per batch (system prompts vary, so padding costs)")
    parser.add_argument("--canvas-lengths", type=parse_lengths, default=(),
                        help="second stage: canvas lengths to train, e.g. 4,8,16 (the longest must be "
                             f"{CANVAS_LENGTH}); default: only {CANVAS_LENGTH}. Measured: no faster on CPU, "
                             "bench/results/engine.md")
    parser.add_argument("--number-feature-scale", type=float, default=NUMBER_FEATURE_SCALE,
                        help="first stage: number tokens' value features, in standard deviations of the random start")
    parser.add_argument("--kind-weights", type=parse_weights, default={},
                        help="both stages: relative share of task kinds, e.g. sort=2.5,case=0.6 (others: 1)")
    args = parser.parse_args()
    start = args.init_from
    if start is None:
        print(json.dumps(train(args.out, args.steps, args.batch_size, args.lr, args.seed, args.threads,
                               args.chunks, kind_weights=args.kind_weights,
                               number_feature_scale=args.number_feature_scale)))
        start = args.out
    if args.system_steps:
        print(json.dumps(train(args.out, args.system_steps, args.batch_size, args.system_lr, args.system_seed,
                               args.threads, args.system_chunks, start, args.system_share,
                               args.history_share, args.kind_weights, args.canvas_lengths)))


if __name__ == "__main__":
    main()

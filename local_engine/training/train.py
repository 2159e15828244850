"""Trains the bundled tiny DiffusionGemma from scratch, deterministically, on CPU.

    python -m local_engine.training.train --out local_engine/assets/tiny-diffusiongemma [--steps 3000]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers.models.diffusion_gemma import DiffusionGemmaForBlockDiffusion, DiffusionGemmaGenerationConfig

from local_engine.training.config import CANVAS_LENGTH, GENERATION, tiny_config
from local_engine.training.objective import block_diffusion_loss
from local_engine.training.tasks import HELD_OUT_SEED_BASE, sample, sample_problem
from local_engine.training.tokenizer import build_tokenizer


def encode_batch(tokenizer, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Left-padded chat prompts (B, P) with their mask, and canvases (B, L): answer, EOS, padding."""
    samples = [sample(seed) for seed in seeds]
    # Rendering the chat template once per batch and tokenizing in one Rust call keeps data prep cheap.
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           tokenize=False) for _, prompt, _ in samples]
    prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
    answers = tokenizer([answer for _, _, answer in samples], add_special_tokens=False)["input_ids"]
    targets = []
    for answer_ids in answers:
        answer_ids = answer_ids[: CANVAS_LENGTH - 1]
        pad = [tokenizer.pad_token_id] * (CANVAS_LENGTH - 1 - len(answer_ids))
        targets.append(answer_ids + [tokenizer.eos_token_id] + pad)
    width = max(map(len, prompts))
    prompt_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return prompt_ids, prompt_mask, torch.tensor(targets)


def training_batches(steps: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """The task seeds of every training step, in order: the one definition of what training saw."""
    seeds = random.Random(seed)
    for _ in range(steps):
        yield [seeds.randrange(HELD_OUT_SEED_BASE) for _ in range(batch_size)]


def trained_problems(steps: int, batch_size: int, seed: int) -> set[tuple[str, str]]:
    """(kind, problem) of every example a run with these settings trained on."""
    return {(kind, problem) for batch in training_batches(steps, batch_size, seed)
            for kind, _, _, problem in map(sample_problem, batch)}


def length_chunks(seeds: list[int], chunks: int) -> list[list[int]]:
    """The batch's seeds sorted by prompt length, cut into `chunks` pieces (padding costs encoder time)."""
    ordered = sorted(seeds, key=lambda s: (len(sample(s)[1]), s))
    size = math.ceil(len(ordered) / chunks)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def train(out: Path, steps: int, batch_size: int, lr: float, seed: int, threads: int | None,
          chunks: int = 2) -> dict[str, float]:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    tokenizer = build_tokenizer()
    model = DiffusionGemmaForBlockDiffusion(tiny_config())
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    generator = torch.Generator().manual_seed(seed)
    started, log = time.time(), []
    for step, batch in enumerate(training_batches(steps, batch_size, seed)):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for piece in length_chunks(batch, chunks):  # gradient accumulation: the same gradient, less padding
            prompt_ids, prompt_mask, target = encode_batch(tokenizer, piece)
            loss = block_diffusion_loss(model, prompt_ids, prompt_mask, target, generator=generator)
            (loss * len(piece) / len(batch)).backward()
            total += loss.item() * len(piece) / len(batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(total, 4), "elapsed_s": round(time.time() - started, 1)})
            print(json.dumps(log[-1]), flush=True)
    model.eval()
    model.generation_config = DiffusionGemmaGenerationConfig(**GENERATION)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "chunks": chunks,
               "wall_s": round(time.time() - started, 1), "final_loss": log[-1]["loss"]}
    (out / "training_log.json").write_text(json.dumps({"summary": summary, "log": log}, indent=1) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "tiny-diffusiongemma")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--chunks", type=int, default=2, help="length-sorted pieces per batch")
    args = parser.parse_args()
    print(json.dumps(train(args.out, args.steps, args.batch_size, args.lr, args.seed, args.threads, args.chunks)))


if __name__ == "__main__":
    main()

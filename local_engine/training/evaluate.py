"""Exact-match accuracy of a checkpoint per task kind on held-out prompts, with plain `generate()`,
and its confidence signals in distribution vs out of distribution (through the engine).

    python -m local_engine.training.evaluate [--checkpoint PATH] [--per-kind 40] [--out bench/results/tiny_model_accuracy.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from local_engine.engine import DiffusionEngine
from local_engine.interface import EngineConfig, GenerationRequest
from local_engine.loading import BUNDLED, load_model
from local_engine.training.tasks import (
    HELD_OUT_SEED_BASE,
    KINDS,
    OUT_OF_DISTRIBUTION,
    check,
    messages_for,
    sample_problem,
)
from local_engine.training.train import stages_of, trained_problems


def held_out_seeds(per_kind: int) -> list[int]:
    """Seeds training never draws, `per_kind` of every kind."""
    out, seed = [], HELD_OUT_SEED_BASE
    counts = dict.fromkeys(KINDS, 0)
    while min(counts.values()) < per_kind:
        kind = sample_problem(seed)[0]
        if counts[kind] < per_kind:
            out.append(seed)
            counts[kind] += 1
        seed += 1
    return out


def held_out_problems(per_kind: int) -> list[tuple[str, str, str, str]]:
    """`per_kind` (kind, prompt, answer, problem) of every kind from seeds training never draws."""
    return [sample_problem(seed) for seed in held_out_seeds(per_kind)]


def held_out(per_kind: int) -> list[tuple[str, str, str]]:
    """`per_kind` prompts of every kind from seeds training never draws."""
    return [row[:3] for row in held_out_problems(per_kind)]


def seen_in_training(checkpoint: Path, rows: list[tuple[str, str, str, str]]) -> list[bool] | None:
    """Whether each held-out problem was also drawn in training (in any phrasing), replayed from the
    checkpoint's training log; None for a checkpoint this repo did not train."""
    log = checkpoint / "training_log.json"
    if not log.exists():
        return None
    trained = trained_problems(stages_of(json.loads(log.read_text())))
    return [(kind, problem) in trained for kind, _, _, problem in rows]


def generate_plain(loaded: Any, prompt: str | list[dict[str, str]]) -> str:
    """One request (a user prompt or a whole chat) through `model.generate()` with the checkpoint's config."""
    chat = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    text = loaded.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([loaded.tokenizer(text, add_special_tokens=False)["input_ids"]])
    out = loaded.model.generate(ids)
    new = (out.sequences if hasattr(out, "sequences") else out)[0, ids.shape[1]:].tolist()
    eos = loaded.model.generation_config.eos_token_id
    return str(loaded.tokenizer.decode(new[: new.index(eos)] if eos in new else new, skip_special_tokens=True))


async def engine_run(checkpoint: str, prompts: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(answer, confidence signals) of each prompt through the engine with its defaults, one at a time."""
    config = EngineConfig(model=checkpoint, max_tokens=64)
    engine = DiffusionEngine(load_model(config), config)
    await engine.start()
    try:
        results = []
        for i, prompt in enumerate(prompts):
            c = await engine.generate(GenerationRequest(request_id=f"e{i}", messages=[{"role": "user",
                                                                                        "content": prompt}], seed=i))
            results.append((c.text, c.confidence.as_dict()))
        return results
    finally:
        await engine.stop()


def _share(flags: list[bool]) -> float | None:
    """The share of True, None when there is nothing to count (e.g. no held-out problem was unseen)."""
    return round(sum(flags) / len(flags), 4) if flags else None


def summarize(signals: list[dict[str, Any]]) -> dict[str, float]:
    return {"mean_steps_per_canvas": round(statistics.fmean(statistics.fmean(s["steps_per_canvas"]) for s in signals), 2),
            "step_cap_hit_rate": round(sum(s["step_cap_hit"] for s in signals) / len(signals), 3),
            "mean_max_entropy": round(statistics.fmean(s["max_entropy"] for s in signals), 4),
            "mean_tokens_per_pass": round(statistics.fmean(s["tokens_per_pass"] for s in signals), 2)}


def evaluate(checkpoint: Path, per_kind: int) -> dict[str, Any]:
    torch.manual_seed(0)
    loaded = load_model(EngineConfig(model=str(checkpoint)))
    started = time.time()
    seeds = held_out_seeds(per_kind)
    rows = [sample_problem(seed) for seed in seeds]
    seen = seen_in_training(checkpoint, rows)  # None: unknown (a checkpoint this repo did not train)
    flags: list[bool | None] = list(seen) if seen is not None else [None] * len(rows)
    per: dict[str, list[tuple[bool, bool | None]]] = {k: [] for k in KINDS}
    for (kind, prompt, answer, _), was_seen in zip(rows, flags, strict=True):
        per[kind].append((check(generate_plain(loaded, prompt), answer), was_seen))
    accuracy = {k: {"n": len(v), "accuracy": _share([r for r, _ in v]),
                    "problem_seen_in_training": None if seen is None else _share([bool(s) for _, s in v]),
                    "accuracy_on_unseen_problems": None if seen is None else _share([r for r, s in v if not s])}
                for k, v in per.items()}
    # The same held-out prompts after a system prompt each (held out too: drawn from the prompt's seed).
    # And as the last turn of a conversation: a system prompt, then 1-3 earlier held-out exchanges.
    with_system: dict[str, list[bool]] = {k: [] for k in KINDS}
    in_conversation: dict[str, list[bool]] = {k: [] for k in KINDS}
    for seed, (kind, prompt, answer, _) in zip(seeds, rows, strict=True):
        with_system[kind].append(check(generate_plain(loaded, messages_for(seed, prompt, 1.0)), answer))
        in_conversation[kind].append(check(generate_plain(loaded, messages_for(seed, prompt, 1.0, 1.0)), answer))
    engine = asyncio.run(engine_run(str(checkpoint), [p for _, p, _, _ in rows]))
    by_engine: dict[str, list[bool]] = {k: [] for k in KINDS}
    for (kind, _, answer, _), (text, _) in zip(rows, engine, strict=True):
        by_engine[kind].append(check(text, answer))
    signals_id = [signals for _, signals in engine[: len(OUT_OF_DISTRIBUTION) * 3]]
    signals_ood = [signals for _, signals in asyncio.run(engine_run(str(checkpoint), OUT_OF_DISTRIBUTION))]
    return {"checkpoint": str(checkpoint), "mode": "plain model.generate(), checkpoint generation config",
            "held_out_seed_base": HELD_OUT_SEED_BASE, "accuracy": accuracy,
            "overall_accuracy": round(sum(r for v in per.values() for r, _ in v) / len(rows), 4),
            "accuracy_after_a_system_prompt": {k: _share(v) for k, v in with_system.items()},
            "overall_accuracy_after_a_system_prompt": _share([r for v in with_system.values() for r in v]),
            "accuracy_in_a_conversation": {k: _share(v) for k, v in in_conversation.items()},
            "overall_accuracy_in_a_conversation": _share([r for v in in_conversation.values() for r in v]),
            "accuracy_engine": {k: _share(v) for k, v in by_engine.items()},
            "overall_accuracy_engine": _share([r for v in by_engine.values() for r in v]),
            "confidence_in_distribution": summarize(signals_id),
            "confidence_out_of_distribution": summarize(signals_ood), "wall_s": round(time.time() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED)
    parser.add_argument("--per-kind", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = evaluate(args.checkpoint, args.per_kind)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

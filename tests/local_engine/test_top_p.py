"""Nucleus sampling (`top_p`) on the engine: the nucleus itself, the draws, and the engine's answers."""

from __future__ import annotations

from pathlib import Path

import torch

from local_engine import EngineConfig, GenerationRequest
from local_engine.denoise import draw, nucleus
from local_engine.engine import DiffusionEngine
from local_engine.loading import load_model


def test_the_nucleus_keeps_the_most_likely_tokens_up_to_top_p() -> None:
    probs = torch.tensor([[[0.15, 0.5, 0.05, 0.3]]] * 4)  # 4 rows, 1 position
    kept = nucleus(probs, torch.tensor([1.0, 0.7, 0.5, 0.0]))
    assert kept[0, 0].tolist() == probs[0, 0].tolist()
    assert torch.equal(kept[1, 0], torch.tensor([0.0, 0.5, 0.0, 0.3]))  # 0.5 + 0.3 reaches 0.7
    assert torch.equal(kept[2, 0], torch.tensor([0.0, 0.5, 0.0, 0.0]))  # 0.5 alone reaches 0.5
    assert torch.equal(kept[3, 0], torch.tensor([0.0, 0.5, 0.0, 0.0]))  # top_p 0: the most likely token only


def test_a_tiny_top_p_samples_the_argmax_and_top_p_1_changes_nothing() -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(3, 16, 50), dim=-1)
    argmax = probs.argmax(-1)
    generators = [torch.Generator().manual_seed(5), None, torch.Generator().manual_seed(6)]
    sampled, _ = draw(probs, argmax, generators, [False] * 3, 50, top_ps=[1e-6, 1e-6, 1.0])
    assert torch.equal(sampled[:2], argmax[:2])  # seeded and shared rows alike
    plain, _ = draw(probs, argmax, [None, None, torch.Generator().manual_seed(6)], [False] * 3, 50)
    assert torch.equal(sampled[2], plain[2])  # a row without a nucleus draws exactly as before
    assert not torch.equal(plain[2], argmax[2])


async def test_the_engine_honours_top_p(random_checkpoint: Path) -> None:
    config = EngineConfig(model=str(random_checkpoint), max_tokens=32)
    engine = DiffusionEngine(load_model(config), config)
    await engine.start()
    try:
        msg = [{"role": "user", "content": "Sort: 3, 1, 2"}]

        async def answer(seed: int, top_p: float | None) -> str:
            request = GenerationRequest(request_id="t", messages=msg, max_tokens=12, seed=seed, top_p=top_p)
            return (await engine.generate(request)).text

        plain = [await answer(seed, None) for seed in range(4)]
        assert [await answer(seed, 1.0) for seed in range(4)] == plain
        narrow = [await answer(seed, 0.05) for seed in range(4)]
        assert narrow == [await answer(seed, 0.05) for seed in range(4)]  # repeatable with its seed
        assert narrow != plain  # a random-weight model's distributions are wide: the nucleus changes answers
    finally:
        await engine.stop()

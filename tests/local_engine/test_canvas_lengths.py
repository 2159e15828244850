"""Canvases fitted to each request: the schedule, rows of different canvas lengths sharing passes and
boundaries, parity with `generate()` at the row's length, and training for several lengths."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import torch

from local_engine import EngineConfig, EngineUnavailableError, GenerationRequest
from local_engine.batch import Batch
from local_engine.denoise import denoise
from local_engine.engine import DiffusionEngine
from local_engine.interface import Completion
from local_engine.loading import canvas_lengths, check_checkpoint, load_model, sampling_of
from local_engine.metering import Meter
from local_engine.prefix import PrefixCache
from local_engine.rows import Row, Sampling
from local_engine.training.tokenizer import build_tokenizer
from local_engine.training.train import block_starts, encode_batch, train
from tests.conftest import save_random_checkpoint

MSG = [{"role": "user", "content": "Sort ascending: 5, 3, 9"}]
LENGTHS = (2, 4, 8)


@pytest.fixture(scope="module")
def multi_canvas_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DiffusionGemma whose config says it was trained for canvases of 2, 4 and 8."""
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny-multi-canvas"), list(LENGTHS))


def sampling(first: int = 0) -> Sampling:
    return Sampling(canvas_length=16, max_steps=16, t_min=0.4, t_max=0.8, entropy_bound=0.1,
                    confidence_threshold=0.005, vocab_size=100, eos_id=1, pad_id=0, canvas_lengths=(4, 8, 16),
                    first_canvas=first)


def row(max_tokens: int) -> Row:
    request = GenerationRequest(request_id="r", messages=MSG)
    return Row(request=request, prompt_ids=[5], max_tokens=max_tokens, generator=None, temperature_scale=1.0)


def test_the_schedule_fits_max_tokens_caps_the_first_canvas_and_doubles_after_it() -> None:
    s = sampling(first=4)
    assert row(256).next_canvas_length(s) == 4  # capped at first_canvas
    assert row(2).next_canvas_length(s) == 4  # room for 2 tokens and EOS: the shortest holding 3
    assert row(256).next_canvas_length(sampling(first=16)) == 16
    assert row(5).next_canvas_length(sampling(first=16)) == 8  # 5 tokens + EOS fit in 8
    long = row(256)
    long.steps_per_canvas, long.canvas_length, long.tokens = [3], 4, [7] * 4
    assert long.next_canvas_length(s) == 8  # twice the last
    long.steps_per_canvas, long.canvas_length, long.tokens = [3, 3], 8, [7] * 12
    assert long.next_canvas_length(s) == 16
    long.canvas_length = 16
    assert long.next_canvas_length(s) == 16  # never past the longest
    ending = row(6)
    ending.steps_per_canvas, ending.canvas_length, ending.tokens = [3], 4, [7] * 4
    assert ending.next_canvas_length(s) == 4  # 2 tokens left + EOS
    only = Sampling(**{**s.__dict__, "canvas_lengths": ()})
    assert row(2).next_canvas_length(only) == 16  # a checkpoint with one canvas length always uses it


def test_the_checkpoint_declares_its_lengths_and_a_first_canvas_it_was_not_trained_for_is_refused(
        multi_canvas_checkpoint: Path, random_checkpoint: Path) -> None:
    assert canvas_lengths(load_model(EngineConfig(model=str(multi_canvas_checkpoint))).model.config) == LENGTHS
    assert canvas_lengths(load_model(EngineConfig(model=str(random_checkpoint))).model.config) == (8,)
    config = EngineConfig(model=str(multi_canvas_checkpoint), first_canvas_length=3)
    with pytest.raises(EngineUnavailableError, match="trained for: 2, 4, 8"):
        DiffusionEngine(load_model(config), config)
    with pytest.raises(EngineUnavailableError, match="trained for: 2, 4, 8"):
        check_checkpoint(config)  # what `draftgate serve` and `check-config` check before a server starts
    check_checkpoint(EngineConfig(model=str(multi_canvas_checkpoint), first_canvas_length=4))


async def run(engine: DiffusionEngine, specs: list[tuple[str, int, int]]) -> dict[str, Completion]:
    results = await asyncio.gather(*(engine.generate(GenerationRequest(request_id=rid, messages=MSG,
                                                                       max_tokens=n, seed=seed))
                                     for rid, n, seed in specs))
    return dict(zip([rid for rid, _, _ in specs], results, strict=True))


async def engine_for(checkpoint: Path, first: int | None, batch: int = 8) -> DiffusionEngine:
    config = EngineConfig(model=str(checkpoint), max_tokens=64, max_batch_size=batch, first_canvas_length=first)
    engine = DiffusionEngine(load_model(config), config)
    await engine.start()
    return engine


async def test_a_fitted_canvas_gives_generates_answer_at_that_length(multi_canvas_checkpoint: Path) -> None:
    engine = await engine_for(multi_canvas_checkpoint, first=8)
    loaded = load_model(EngineConfig(model=str(multi_canvas_checkpoint)))
    ids = torch.tensor([engine._prompt_ids(MSG)])
    eos = loaded.model.generation_config.eos_token_id
    try:
        for max_tokens, canvas in ((1, 2), (3, 4), (7, 8)):
            loaded.model.config.canvas_length = canvas  # what generate() denoises
            torch.manual_seed(11)
            out = loaded.model.generate(ids, max_new_tokens=canvas).sequences[0, ids.shape[1]:].tolist()
            expected = (out[: out.index(eos)] if eos in out else out)[:max_tokens]
            got = (await run(engine, [("r", max_tokens, 11)]))["r"]
            assert got.text == loaded.tokenizer.decode(expected, skip_special_tokens=True), (max_tokens, canvas)
            assert len(got.confidence.steps_per_canvas) == 1
    finally:
        await engine.stop()


async def test_rows_of_different_canvas_lengths_share_passes_and_boundaries_and_answer_as_alone(
        multi_canvas_checkpoint: Path) -> None:
    # first canvas 2, then 4, then 8: rows with different max_tokens grow apart after the first boundary
    specs = [("a", 1, 1), ("b", 3, 2), ("c", 6, 3), ("d", 20, 4), ("e", 40, 5)]
    alone_engine = await engine_for(multi_canvas_checkpoint, first=2, batch=1)
    together_engine = await engine_for(multi_canvas_checkpoint, first=2, batch=8)
    try:
        alone = {rid: (await run(alone_engine, [(rid, n, s)]))[rid] for rid, n, s in specs}
        together = await run(together_engine, specs)
    finally:
        await alone_engine.stop()
        await together_engine.stop()
    stats = together_engine.stats
    assert stats.rows_per_pass[5] >= 1 and stats.canvas_boundaries >= 2  # they did share passes and boundaries
    assert len(together["e"].confidence.steps_per_canvas) >= 3  # canvases of 2, 4, 8 ...
    for rid, _, _ in specs:
        a, b = alone[rid], together[rid]
        assert b.text == a.text, rid
        assert b.confidence.steps_per_canvas == a.confidence.steps_per_canvas, rid
        assert b.confidence.max_entropy == pytest.approx(a.confidence.max_entropy, abs=1e-4)
    # Short canvases compute fewer positions than the checkpoint's 8 per row pass.
    assert stats.canvas_positions < 8 * stats.row_passes


def test_block_starts_follow_the_engines_schedule() -> None:
    lengths = (4, 8, 16)
    assert block_starts(10, 16, lengths) == [0, 8]  # opened at 16, or the second canvas after an 8
    assert block_starts(10, 8, lengths) == [0, 4]  # opened at 8, or the second canvas after a 4
    assert block_starts(10, 4, lengths) == [0]
    assert block_starts(3, 16, lengths) == [0]
    assert block_starts(40, 16, lengths) == [0, 8, 12, 16, 24, 28, 32]
    assert block_starts(30, 16, (4, 16)) == [0, 4, 16, 20]  # after a 4 the engine opens 16, not 8


def test_a_later_block_puts_the_answer_before_it_into_the_prompt() -> None:
    tokenizer = build_tokenizer()
    seeds = [s for s in range(200) if s % 6 == 1][:8]  # sorting: answers of 5-9 tokens
    plain_ids, plain_mask, plain_target = encode_batch(tokenizer, seeds)
    blocks = random.Random(0)
    ids, mask, target = encode_batch(tokenizer, seeds, canvas=4, canvas_lengths=(4, 8, 16), blocks=blocks)
    assert target.shape == (8, 4)
    for i in range(8):
        answer = plain_target[i][plain_target[i] != tokenizer.pad_token_id].tolist()  # answer + EOS
        prompt = plain_ids[i][plain_mask[i].bool()].tolist()
        got_prompt = ids[i][mask[i].bool()].tolist()
        start = len(got_prompt) - len(prompt)
        assert got_prompt[: len(prompt)] == prompt and got_prompt[len(prompt):] == answer[:start]
        block = answer[start:start + 4]
        assert target[i].tolist() == block + [tokenizer.pad_token_id] * (4 - len(block))
    blocks = random.Random(0)
    _, _, target = encode_batch(tokenizer, seeds, canvas=8, canvas_lengths=(4, 8, 16), blocks=blocks)
    assert target.shape == (8, 8)


def test_training_for_several_lengths_records_them_for_the_engine(tmp_path: Path) -> None:
    first = train(tmp_path / "one", steps=2, batch_size=4, lr=1e-3, seed=0, threads=None)
    assert "trained_canvas_lengths" not in (tmp_path / "one" / "config.json").read_text()
    second = train(tmp_path / "two", steps=2, batch_size=4, lr=1e-3, seed=1, threads=None,
                   init_from=tmp_path / "one", canvas_lengths=(4, 8, 16))
    assert first["canvas_lengths"] is None and second["canvas_lengths"] == [4, 8, 16]
    assert canvas_lengths(load_model(EngineConfig(model=str(tmp_path / "two"))).model.config) == (4, 8, 16)


class Slot:
    def __init__(self, row: Row) -> None:
        self.row = row


def test_a_short_row_computes_in_a_wider_pass_what_it_computes_alone(multi_canvas_checkpoint: Path) -> None:
    """The decoder masks a row's positions past its canvas out of attention, so its logits do not
    depend on what else is in the pass (or on what lies in its dead positions)."""
    loaded = load_model(EngineConfig(model=str(multi_canvas_checkpoint)))
    engine_rows = DiffusionEngine(loaded, EngineConfig(model=str(multi_canvas_checkpoint)))
    sampling = sampling_of(loaded, first_canvas=8)

    def batch_of(requests: list[tuple[int, int]]) -> tuple[Batch, list[Row]]:
        batch = Batch(loaded.model, sampling, Meter(loaded.device, 0.1), loaded.device, PrefixCache(0, 64))
        rows = []
        for i, n in requests:
            ids = engine_rows._prompt_ids([{"role": "user", "content": f"Sort ascending: {i}, 3, 9"}])
            rows.append(Row(request=GenerationRequest(request_id=str(i), messages=MSG), prompt_ids=ids,
                            max_tokens=n, generator=torch.Generator().manual_seed(i), temperature_scale=1.0))
        batch.admit([Slot(r) for r in rows])
        return batch, rows

    with torch.no_grad():
        mixed, rows = batch_of([(0, 1), (1, 3), (2, 20)])  # canvases of 2, 4 and 8 in one pass
        assert [r.canvas_length for r in rows] == [2, 4, 8]
        mixed._canvas[0, 2:] = 7  # whatever lies past a row's canvas must not matter
        together = mixed._decode(slice(None), True, 8)
        for i, (n, own) in enumerate(((1, 2), (3, 4))):
            alone, _ = batch_of([(i, n)])
            alone._canvas[0, :own] = mixed._canvas[i, :own]
            logits = alone._decode(slice(None), True, own)
            torch.testing.assert_close(together[i, :own], logits[0], rtol=1e-4, atol=1e-4)


def test_denoising_a_short_row_in_a_wider_step_equals_its_own_step() -> None:
    """Dead positions get no entropy, no draws and padding, whatever their logits say."""
    s = Sampling(canvas_length=8, max_steps=16, t_min=0.4, t_max=0.8, entropy_bound=0.1,
                 confidence_threshold=0.005, vocab_size=50, eos_id=1, pad_id=0)
    torch.manual_seed(0)
    logits = torch.randn(1, 8, 50) * 3
    logits[0, 4:] = 0.0  # flat garbage past the row's canvas of 4: high entropy
    canvas = torch.randint(0, 50, (1, 8))
    previous = torch.randint(0, 50, (1, 8))
    steps, scales = torch.tensor([2]), torch.tensor([1.0])
    wide = denoise(logits, canvas, previous, steps, scales, [torch.Generator().manual_seed(5)], [False], s, [4])
    own = denoise(logits[:, :4], canvas[:, :4], previous[:, :4], steps, scales, [torch.Generator().manual_seed(5)],
                  [False], s, [4])
    assert torch.equal(wide.canvas[:, :4], own.canvas) and torch.equal(wide.argmax[:, :4], own.argmax)
    assert wide.canvas[0, 4:].eq(0).all() and wide.argmax[0, 4:].eq(0).all()
    assert (wide.done, wide.cap_hit) == (own.done, own.cap_hit)
    confident = torch.full((1, 8, 50), -30.0)
    confident[..., 3] = 30.0  # every live position certain: the row converges ...
    confident[0, 4:] = 0.0  # ... although its dead positions are flat
    previous = torch.tensor([[3, 3, 3, 3, 0, 0, 0, 0]])  # the last argmax: padding past the canvas
    again = denoise(confident, canvas, previous, steps, scales, [torch.Generator().manual_seed(5)],
                    [False], s, [4])
    assert again.done == [True] and again.cap_hit == [False]

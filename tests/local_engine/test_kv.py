"""Rows of different lengths in one merged, left-padded cache decode as they would alone (past the sliding window)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from local_engine import kv
from local_engine.interface import EngineConfig
from local_engine.loading import load_model


def encode(model: Any, cache: Any, mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Appends ids (b, n) to cache; returns the extended (b, T + n) mask. Positions count real tokens per row."""
    full = torch.cat([mask, torch.ones_like(ids)], dim=1)
    positions = mask.sum(1, keepdim=True) + torch.arange(ids.shape[1])
    model.model.encoder(input_ids=ids, attention_mask=None if bool(full.all()) else full, position_ids=positions,
                        cache=cache)
    return full


def decode(model: Any, cache: Any, mask: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
    length = canvas.shape[1]
    positions = mask.sum(1, keepdim=True) + torch.arange(length)
    full = torch.cat([mask, torch.ones_like(canvas)], dim=1)
    out = model(cache=cache, decoder_input_ids=canvas, decoder_position_ids=positions,
                decoder_attention_mask=None if bool(full.all()) else full)
    return out.logits.float()  # type: ignore[no-any-return]


def solo(model: Any, prompt: torch.Tensor, canvases: list[torch.Tensor]) -> list[torch.Tensor]:
    """Logits of each canvas for one row alone: decode it, then encode it, as the engine does per canvas."""
    cache = DynamicCache(config=model.config.text_config)
    mask = encode(model, cache, torch.zeros(1, 0, dtype=torch.long), prompt)
    out = []
    for canvas in canvases:
        out.append(decode(model, cache, mask, canvas))
        mask = encode(model, cache, mask, canvas)
    return out


def setup(checkpoint: Path, seed: int) -> tuple[Any, int, int, int]:
    """(model, sliding window, canvas length, vocabulary size) of the random checkpoint, seeded."""
    torch.manual_seed(seed)
    model = load_model(EngineConfig(model=str(checkpoint))).model
    return model, model.config.text_config.sliding_window, model.config.canvas_length, model.config.text_config.vocab_size


def test_merged_rows_decode_as_alone_across_the_sliding_window(random_checkpoint: Path) -> None:
    model, window, length, vocab = setup(random_checkpoint, 0)
    with torch.inference_mode():
        long_prompt = torch.randint(3, vocab, (1, window + 20))  # its sliding layers are already full
        short_prompt = torch.randint(3, vocab, (1, 9))
        canvases = [torch.randint(0, vocab, (2, length)) for _ in range(3)]
        alone_long = solo(model, long_prompt, [c[:1] for c in canvases])
        alone_short = solo(model, short_prompt, [c[1:] for c in canvases])

        # The running batch holds the short row; the long one arrives and is merged under it.
        cache = DynamicCache(config=model.config.text_config)
        mask = encode(model, cache, torch.zeros(1, 0, dtype=torch.long), short_prompt)
        other = DynamicCache(config=model.config.text_config)
        other_mask = encode(model, other, torch.zeros(1, 0, dtype=torch.long), long_prompt)
        cache, mask = kv.merge(cache, mask, other, other_mask)
        assert mask.shape == (2, window + 20) and int(mask[0].sum()) == 9
        for i, canvas in enumerate(canvases[:2]):
            logits = decode(model, cache, mask, canvas.flip(0))  # row 0 short, row 1 long
            torch.testing.assert_close(logits[1:], alone_long[i], atol=2e-4, rtol=0)
            torch.testing.assert_close(logits[:1], alone_short[i], atol=2e-4, rtol=0)
            sub = kv.view(cache, torch.tensor([0]))  # a read-only view of one row decodes the same
            torch.testing.assert_close(decode(model, sub, mask[:1], canvas[1:]), logits[:1], atol=2e-4, rtol=0)
            mask = encode(model, cache, mask, canvas.flip(0))

        kv.select(cache, torch.tensor([0]))  # the long row leaves: the padding it needed is trimmed away
        mask = kv.trim(cache, mask[:1])
        assert mask.shape == (1, 9 + 2 * length) and bool(mask.all())
        assert kv.width(cache) == 9 + 2 * length
        torch.testing.assert_close(decode(model, cache, mask, canvases[2][1:]), alone_short[2], atol=2e-4, rtol=0)


def test_rows_going_on_at_different_times_stay_right_aligned_and_decode_as_alone(random_checkpoint: Path) -> None:
    model, window, length, vocab = setup(random_checkpoint, 1)
    with torch.inference_mode():
        prompts = [torch.randint(3, vocab, (1, window + 20)), torch.randint(3, vocab, (1, 9))]
        canvases = [[torch.randint(0, vocab, (1, length)) for _ in range(3)] for _ in prompts]
        alone = [solo(model, p, c) for p, c in zip(prompts, canvases, strict=True)]

        cache = DynamicCache(config=model.config.text_config)
        mask = encode(model, cache, torch.zeros(1, 0, dtype=torch.long), prompts[0])
        other = DynamicCache(config=model.config.text_config)
        cache, mask = kv.merge(cache, mask, other, encode(model, other, torch.zeros(1, 0, dtype=torch.long), prompts[1]))
        done = [0, 0]  # canvases each row has appended
        for goes_on in ([0], [1], [1], [0]):  # row 0 one canvas ahead, then row 1 two, then row 0 again
            for row in (0, 1):  # every row decodes its next canvas as it would alone
                sub = kv.view(cache, torch.tensor([row]))
                torch.testing.assert_close(decode(model, sub, mask[row:row + 1], canvases[row][done[row]]),
                                           alone[row][done[row]], atol=2e-4, rtol=0)
            index = torch.tensor(goes_on)
            grown = kv.view(cache, index)
            encode(model, grown, mask[index], canvases[goes_on[0]][done[goes_on[0]]])
            mask = kv.append_rows(cache, mask, grown, index, length)
            done[goes_on[0]] += 1
            assert kv.width(cache) == mask.shape[1]
            assert bool(mask[:, -1].all())  # both rows end at the last column: no gaps
            assert [int(m.sum()) for m in mask] == [p.shape[1] + length * d for p, d in zip(prompts, done, strict=True)]
            real = [int(m.sum()) for m in mask]
            assert all(bool(mask[i, mask.shape[1] - real[i]:].all()) for i in (0, 1))  # contiguous

"""A byte-fallback tokenizer (Gemma's) spells some characters as byte tokens, decoded a run at a time: a stream
must not send the text of a run a canvas boundary cut, which the next canvas can still change."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast
from transformers.models.diffusion_gemma import (
    DiffusionGemmaForBlockDiffusion,
    DiffusionGemmaGenerationConfig,
)

from local_engine import Completion, EngineConfig, GenerationRequest, StreamDelta
from local_engine.engine import DiffusionEngine
from local_engine.loading import load_model
from local_engine.training.config import GENERATION, tiny_config
from local_engine.training.tokenizer import CHAT_TEMPLATE, SPECIALS
from tests.conftest import ACCEPT_ALL

# Letters as bytes, and "é" as <0xC3><0xA9>: a run of them is text while every C3 has its A9, and U+FFFD per
# byte once one has not, so the decoding of what a canvas committed can change with the next canvas.
BYTES = [f"<0x{b:02X}>" for b in [*range(0x41, 0x5B), 0xC3, 0xA9]]


def byte_fallback_checkpoint(out: Path) -> Path:
    """A tiny random DiffusionGemma (8-token canvases) whose vocabulary is the specials and BYTES."""
    vocab = {token: i for i, token in enumerate([*SPECIALS, *BYTES])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    core.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    core.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",  # type: ignore[no-untyped-call]
                                        bos_token="<bos>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = tiny_config(hidden=64, layers=2, canvas_length=8)
    config.text_config.vocab_size = len(vocab)
    model = DiffusionGemmaForBlockDiffusion(config)
    model.generation_config = DiffusionGemmaGenerationConfig(**{**GENERATION, "max_new_tokens": 8,
                                                                "max_denoising_steps": 4, "sampler_config": ACCEPT_ALL})
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


async def test_a_stream_sends_no_text_a_later_canvas_changes(tmp_path: Path) -> None:
    config = EngineConfig(model=str(byte_fallback_checkpoint(tmp_path)), max_tokens=32, max_batch_size=16)
    engine = DiffusionEngine(load_model(config), config)
    await engine.start()

    async def answer(seed: int) -> tuple[str, str]:
        request = GenerationRequest(request_id=f"b{seed}", messages=[{"role": "user", "content": "HI"}],
                                    max_tokens=32, seed=seed)
        events = [event async for event in engine.stream(request)]
        assert isinstance(events[-1], Completion)
        return "".join(e.text for e in events if isinstance(e, StreamDelta)), events[-1].text

    try:
        answers = await asyncio.gather(*(answer(seed) for seed in range(16)))
    finally:
        await engine.stop()
    assert any(len(text) > 8 for _, text in answers)  # answers that cross canvas boundaries
    # The deltas were "HWBMIP" and then U+FFFD for every byte: the next canvas had turned the run invalid.
    assert [seed for seed, (streamed, text) in enumerate(answers) if streamed != text] == []

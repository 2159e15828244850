"""The block-diffusion training loss (transformers ships none for DiffusionGemma).

The clean prefix (the chat prompt) goes through the causal encoder into the KV cache; the target
canvas (answer, EOS, padding) is corrupted by replacing a per-row random fraction r ~ U(0, 1] of its
positions with uniform random tokens; the bidirectional decoder predicts the clean canvas and the loss
is cross-entropy over every canvas position. Scoring clean positions too teaches the model to keep
tokens it already has (generation renoises only what it did not accept), and scoring the padding
after EOS teaches it to stop confidently, which is what lets the engine exit a canvas early.
With self-conditioning, half of the rows first get a no-grad decoder pass whose logits are fed back,
as the decoder sees them at inference from the second denoising step on; only those rows run that pass.
The prompt goes through the encoder once: both decoder passes read the same cache (the no-grad one a
view of the rows it needs, `kv.view`), as `generate()` reuses one cache across denoising steps. Running
the whole model twice gives the same loss and gradients up to float rounding and costs an extra encoder
pass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from local_engine import kv


def corrupt(canvas: torch.Tensor, vocab_size: int, generator: torch.Generator | None = None,
            rate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replaces a per-row fraction of positions with uniform random tokens. Returns (noisy, mask)."""
    batch, length = canvas.shape  # (B, L)
    if rate is None:
        rate = 1.0 - torch.rand(batch, 1, generator=generator)  # (B, 1) in (0, 1]
    mask = torch.rand(batch, length, generator=generator) < rate  # (B, L)
    noise = torch.randint(0, vocab_size, (batch, length), generator=generator)
    return torch.where(mask, noise, canvas), mask


def block_diffusion_loss(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                         target: torch.Tensor, *, generator: torch.Generator | None = None,
                         self_condition_p: float = 0.5) -> torch.Tensor:
    """Mean cross-entropy of the decoder's canvas predictions. Shapes: prompt (B, P), target (B, L)."""
    vocab = model.config.text_config.vocab_size
    batch, prompt_len = prompt_ids.shape
    canvas_len = target.shape[1]
    noisy, _ = corrupt(target, vocab, generator)
    positions = torch.arange(prompt_len, prompt_len + canvas_len).unsqueeze(0)  # (1, L)
    decoder_mask = torch.cat([prompt_mask, torch.ones(batch, canvas_len, dtype=prompt_mask.dtype)], dim=1)
    cache = DynamicCache(config=model.config.text_config)
    model.model.encoder(input_ids=prompt_ids, attention_mask=prompt_mask, cache=cache)  # writes the cache, with grad
    kwargs: dict[str, Any] = dict(cache=cache, decoder_input_ids=noisy, decoder_attention_mask=decoder_mask,
                                  decoder_position_ids=positions)
    if self_condition_p > 0:
        use = torch.rand(batch, generator=generator) < self_condition_p  # (B,)
        if bool(use.any()):
            first = torch.zeros(batch, canvas_len, vocab)
            with torch.no_grad():  # only the rows that use it pay for the first pass; no graph reaches the cache
                first[use] = model(cache=kv.view(cache, use.nonzero().squeeze(1)), decoder_input_ids=noisy[use],
                                   decoder_attention_mask=decoder_mask[use], decoder_position_ids=positions).logits
            kwargs.update(self_conditioning_logits=first, self_conditioning_mask=use)
    logits = model(**kwargs).logits  # (B, L, V), float32, soft-capped
    return F.cross_entropy(logits.reshape(-1, vocab), target.reshape(-1))

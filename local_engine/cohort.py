"""A cohort: rows admitted together, sharing one left-padded KV cache, denoised in one batched pass.

Each scheduler tick advances every cohort by one unit: the prompts' encoder pass, one batched
denoising step, or (when every remaining row's canvas has converged) the encoder pass over the
committed canvases. A row that finishes (EOS, max_tokens, a stop string) or is cancelled leaves its
cohort at once: its cache row is dropped (`Cache.batch_select_indices`), so no pass computes it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache

from local_engine.metering import Meter
from local_engine.rows import Row, RowState, Sampling


class Cohort:
    """Rows that share a cache; `members` are opaque slots whose `.row` is a Row."""

    def __init__(self, members: list[Any], model: Any, sampling: Sampling, meter: Meter,
                 device: torch.device, pad_id: int) -> None:
        self.members = members
        self._model = model
        self._sampling = sampling
        self._meter = meter
        self._device = device
        self._pad = pad_id
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # (B, T): 1 for real tokens, 0 for left padding
        self._length = 0  # T
        self._encoded = False

    @property
    def rows(self) -> list[Row]:
        return [m.row for m in self.members]

    def _charge(self, started: float) -> None:
        self._meter.stop(started, [r.device_seconds for r in self.rows])

    @property
    def _padded(self) -> bool:
        return self._mask is not None and not bool(self._mask.all())

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        """Appends (B, n) tokens to the shared cache."""
        n = ids.shape[1]
        self._mask = mask if self._mask is None else torch.cat([self._mask, mask], dim=1)
        attention = self._mask if self._padded else None
        positions = torch.arange(self._length, self._length + n, device=self._device).unsqueeze(0)
        started = self._meter.start()
        self._model.model.encoder(input_ids=ids, attention_mask=attention, position_ids=positions,
                                  cache=self._cache)
        self._charge(started)
        self._length += n

    def start(self) -> None:
        """Encodes the prompts (left-padded) and opens every row's first canvas."""
        self._cache = DynamicCache(config=self._model.config.text_config)
        width = max(len(r.prompt_ids) for r in self.rows)
        ids = torch.tensor([[self._pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in self.rows],
                           device=self._device)
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in self.rows],
                            device=self._device)
        self._encode(ids, mask)
        for row in self.rows:
            row.start_canvas(self._sampling, self._device)
        self._encoded = True

    def keep(self, keep: list[int]) -> None:
        """Drops every member not in `keep` (indices), from the cache too."""
        if len(keep) == len(self.members):
            return
        self.members = [self.members[i] for i in keep]
        if keep and self._cache is not None:
            index = torch.tensor(keep, device=self._device)
            self._cache.batch_select_indices(index)
            assert self._mask is not None
            self._mask = self._mask[index]

    def step(self, on_converged: Callable[[Any], None]) -> None:
        """One unit of work; `on_converged(member)` commits a finished canvas (it may finish the row)."""
        if not self._encoded:
            self.start()
            return
        self.keep([i for i, r in enumerate(self.rows) if not r.cancelled and r.state is not RowState.DONE])
        if not self.members:
            return
        denoising = [r.converged_canvas is False for r in self.rows]
        if not any(denoising):
            self._next_canvas()
            return
        logits = self._decode()  # (B, L, V)
        for i, member in enumerate(list(self.members)):
            row = member.row
            if row.converged_canvas is False and row.denoise(logits[i:i + 1], self._sampling):
                row.converged_canvas = True
                on_converged(member)
        self.keep([i for i, r in enumerate(self.rows) if r.state is not RowState.DONE and not r.cancelled])

    def _decode(self) -> torch.Tensor:
        rows = self.rows
        canvas = torch.cat([r.canvas for r in rows], dim=0)  # (B, L)
        length = self._sampling.canvas_length
        positions = torch.arange(self._length, self._length + length, device=self._device).unsqueeze(0)
        assert self._mask is not None
        mask: torch.Tensor | None = None
        if self._padded:  # without padding the decoder takes its fast path (no mask, as generate() does)
            mask = torch.cat([self._mask, torch.ones(len(rows), length, dtype=self._mask.dtype,
                                                     device=self._device)], dim=1)
        conditioning = None
        if all(r.self_conditioning is not None for r in rows):
            conditioning = torch.cat([r.self_conditioning for r in rows], dim=0)  # type: ignore[misc]
        started = self._meter.start()
        out = self._model(cache=self._cache, decoder_input_ids=canvas, decoder_position_ids=positions,
                          decoder_attention_mask=mask, self_conditioning_logits=conditioning)
        self._charge(started)
        for r in rows:
            if r.converged_canvas is False:
                r.decoder_passes += 1
        logits: torch.Tensor = out.logits.float()
        return logits

    def _next_canvas(self) -> None:
        """Every remaining row committed its canvas and goes on: encode the canvases, open new ones."""
        rows = self.rows
        ids = torch.stack([r.last_canvas for r in rows]).to(self._device)  # (B, L)
        self._encode(ids, torch.ones_like(ids))
        for row in rows:
            row.start_canvas(self._sampling, self._device)

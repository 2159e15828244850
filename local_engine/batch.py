"""The running batch: every active request in one left-padded KV cache, denoised by one decoder pass per tick.

Continuous batching across denoising blocks. Arrivals have their prompts encoded in one encoder pass
(a row whose prompt starts with a cached prefix encodes only the rest, on a fork of the prefix's
states: `local_engine/prefix.py`) and their cache rows merged into the running batch's (`kv.merge`);
they start their first canvas in the very next decoder pass, next to rows that are steps into theirs
(each row has its own step count, temperature and self-conditioning mask). A row whose canvas finished
commits it at once; a finished request leaves at once (its cache row is dropped) and is never computed
again. A row that goes on crosses its own canvas boundary on the next tick: its canvas is encoded
(with the other rows that finished a canvas as long on the same tick) and appended to its cache row
(`kv.append_rows`), and it opens its next canvas, while the other rows keep denoising theirs.

Canvases are fitted to each request (`Row.next_canvas_length`) when the checkpoint was trained for
several lengths: the batch's canvas tensors are as wide as its longest canvas, and each decoder pass
computes only as many positions as its longest row needs; a shorter row's extra positions are masked
out of attention. Rows append their canvases in groups of equal length, so the cache never holds them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from local_engine import kv
from local_engine.denoise import denoise, entropy_of
from local_engine.metering import Meter
from local_engine.prefix import PrefixCache
from local_engine.rows import Row, RowState, Sampling


@dataclass
class BatchStats:
    """What the batch computed, for tests and benchmarks (plain counters; they only grow)."""

    decoder_passes: int = 0
    row_passes: int = 0  # rows computed, summed over decoder passes
    canvas_positions: int = 0  # canvas positions computed, summed over rows and decoder passes
    encoder_passes: int = 0
    canvas_boundaries: int = 0
    joined_running: int = 0  # requests merged into a batch that already had rows
    joined_mid_canvas: int = 0  # of those, merged next to rows already steps into their canvas
    rows_per_pass: Counter[int] = field(default_factory=Counter)


class Batch:
    """Active rows and their tensors; `members` are opaque slots whose `.row` is a Row (same order as the tensors)."""

    def __init__(self, model: Any, sampling: Sampling, meter: Meter, device: torch.device,
                 prefixes: PrefixCache) -> None:
        self._model = model
        self._prefixes = prefixes
        self._sampling = sampling
        self._meter = meter
        self._device = device
        self.stats = BatchStats()
        self._embed_dtype = model.model.decoder.embed_tokens.weight.dtype
        self.clear()

    def clear(self) -> None:
        """Forgets every row (the engine failed or stopped them)."""
        self.members: list[Any] = []
        self._cache: Any = None
        self._mask = torch.zeros(0, 0, dtype=torch.long, device=self._device)  # (B, T): 1 real, 0 left padding
        length = self._sampling.canvas_length
        self._canvas = torch.zeros(0, length, dtype=torch.long, device=self._device)  # (B, L) noisy canvas
        self._argmax = torch.zeros_like(self._canvas)  # (B, L) previous step's argmax; the commit at the end
        self._live = torch.zeros(0, length, dtype=torch.bool, device=self._device)  # (B, L) inside the row's canvas
        self._steps = torch.zeros(0, dtype=torch.long, device=self._device)  # (B,) steps on the current canvas
        self._scales = torch.zeros(0, device=self._device)  # (B,) each request's temperature scale
        self._conditioning = torch.zeros(0, length, self._sampling.vocab_size, dtype=self._embed_dtype,
                                         device=self._device)  # (B, L, V) previous step's processed logits

    @property
    def rows(self) -> list[Row]:
        return [m.row for m in self.members]

    def _charge(self, started: float, rows: list[Row]) -> None:
        self._meter.stop(started, [r.device_seconds for r in rows])

    def _padded(self, mask: torch.Tensor) -> bool:
        return not bool(mask.all())

    def _encode(self, cache: Any, mask: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor) -> None:
        """Appends (b, n) tokens to `cache`; `mask` (b, T + n) covers the cache and the new tokens."""
        attention = mask if self._padded(mask) else None  # no mask: the fast path, as generate() takes
        self._model.model.encoder(input_ids=ids, attention_mask=attention, position_ids=positions, cache=cache)
        self.stats.encoder_passes += 1

    def _open_canvases(self, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """(canvas, live), both (n, L): fresh uniform-random canvases fitted to each request, each drawn from
        its request's generator (generate()'s first draw at that length), padding past its length."""
        length, vocab = self._sampling.canvas_length, self._sampling.vocab_size
        canvas = torch.empty(len(rows), length, dtype=torch.long, device=self._device)  # padded below
        shared = [i for i, r in enumerate(rows) if r.generator is None]
        for i, row in enumerate(rows):
            row.state = RowState.DENOISING
            row.canvas_length = own = row.next_canvas_length(self._sampling)
            if row.generator is not None:
                canvas[i, :own] = torch.randint(0, vocab, (1, own), generator=row.generator, device=self._device)
        if shared:
            canvas[torch.tensor(shared, device=self._device)] = torch.randint(
                0, vocab, (len(shared), length), device=self._device)
        lengths = torch.tensor([r.canvas_length for r in rows], device=self._device)
        live = torch.arange(length, device=self._device) < lengths[:, None]
        return canvas.masked_fill(~live, self._sampling.pad_id), live

    def _encode_group(self, rows: list[Row]) -> tuple[Any, torch.Tensor]:
        """The rows' whole prompts, left-padded, in one encoder pass: (cache, mask)."""
        started = self._meter.start()
        width = max(len(r.prompt_ids) for r in rows)
        pad = self._sampling.pad_id
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows], device=self._device)
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows],
                            device=self._device)
        positions = (mask.cumsum(1) - 1).clamp_min(0)  # (n, w): each row counts from 0, whatever its padding
        cache = DynamicCache(config=self._model.config.text_config)
        self._encode(cache, mask, ids, positions)
        self._charge(started, rows)
        return cache, mask

    def _prefix_plan(self, row: Row) -> tuple[int, Any, int] | None:
        """(tokens to take from the cache, their states, the longer prefix to cache now), or None: no prefix.

        The longest cached prefix is used; a longer one seen for the second time is encoded on top of
        it and cached.
        """
        ids, cached = row.prompt_ids, self._prefixes
        start, entry = 0, None
        for cut in reversed(row.prefix_cuts):
            entry = cached.get(tuple(ids[:cut]))
            if entry is not None:
                start = cut
                break
        wanted = [cut for cut in row.prefix_cuts if cut > start and cached.wanted(tuple(ids[:cut]))]  # notes all
        store = max(wanted, default=0)
        return (start, entry, store) if start or store else None

    def _encode_after_prefix(self, row: Row, start: int, entry: Any, store: int) -> tuple[Any, torch.Tensor]:
        """One row's prompt on a fork of its cached prefix's states (`start` tokens; 0: none), caching the
        first `store` tokens' states on the way (0: nothing to cache)."""
        started = self._meter.start()
        ids, total = row.prompt_ids, len(row.prompt_ids)
        cache = kv.fork(entry) if entry is not None else DynamicCache(config=self._model.config.text_config)
        row.cached_tokens = start
        done = start
        for end in (store, total):
            if end <= done:
                continue
            mask = torch.ones(1, end, dtype=torch.long, device=self._device)
            positions = torch.arange(done, end, device=self._device).unsqueeze(0)
            self._encode(cache, mask, torch.tensor([ids[done:end]], device=self._device), positions)
            if end == store:
                self._prefixes.put(tuple(ids[:store]), kv.fork(cache))  # the row's own states grow on
            done = end
        self._charge(started, [row])
        return cache, torch.ones(1, total, dtype=torch.long, device=self._device)

    def _encode_prompts(self, slots: list[Any]) -> tuple[list[Any], Any, torch.Tensor]:
        """Encodes the arrivals' prompts; returns the slots in the order of the (cache, mask) rows.

        Rows whose prefix is cached (or seen for the second time) encode only their suffix, one pass
        each; the others share one left-padded pass.
        """
        plain: list[Any] = []
        parts: list[tuple[list[Any], Any, torch.Tensor]] = []
        for slot in slots:
            plan = self._prefix_plan(slot.row)
            if plan is None:
                plain.append(slot)
                continue
            parts.append(([slot], *self._encode_after_prefix(slot.row, *plan)))
        if plain:
            parts.insert(0, (plain, *self._encode_group([s.row for s in plain])))
        ordered, cache, mask = parts[0]
        ordered = list(ordered)
        for more, other, other_mask in parts[1:]:
            cache, mask = kv.merge(cache, mask, other, other_mask)
            ordered += more
        return ordered, cache, mask

    def admit(self, slots: list[Any]) -> None:
        """Encodes the arrivals' prompts and merges them into the running batch."""
        slots, cache, mask = self._encode_prompts(slots)
        rows = [s.row for s in slots]
        started = self._meter.start()
        n, length = len(rows), self._sampling.canvas_length
        opened, live = self._open_canvases(rows)
        canvas, live = torch.cat([self._canvas, opened]), torch.cat([self._live, live])
        # Nothing below raises short of running out of memory, so a failed admission leaves the batch as it was.
        if self.members:
            self.stats.joined_running += n
            self.stats.joined_mid_canvas += n if bool((self._steps > 0).any()) else 0
            self._cache, self._mask = kv.merge(self._cache, self._mask, cache, mask)
        else:
            self._cache, self._mask = cache, mask
        self.members += slots
        self._canvas, self._live = canvas, live
        self._argmax = torch.cat([self._argmax, torch.zeros(n, length, dtype=torch.long, device=self._device)])
        self._steps = torch.cat([self._steps, torch.zeros(n, dtype=torch.long, device=self._device)])
        self._scales = torch.cat([self._scales, torch.tensor([r.temperature_scale for r in rows],
                                                             device=self._device)])
        self._conditioning = torch.cat([self._conditioning, self._conditioning.new_zeros(
            n, length, self._sampling.vocab_size)])
        self._charge(started, rows)

    def boundary(self) -> None:
        """The rows that committed a canvas and go on: encodes their canvases and opens their next ones,
        while the other rows keep denoising. Rows whose canvases are equally long share an encoder pass."""
        waiting = [i for i, r in enumerate(self.rows) if r.state is RowState.BOUNDARY]
        if not waiting:
            return
        rows = [self.members[i].row for i in waiting]
        started = self._meter.start()
        for length in sorted({r.canvas_length for r in rows}):
            group = [i for i in waiting if self.members[i].row.canvas_length == length]
            everyone = len(group) == len(self.members)
            index = torch.tensor(group, device=self._device)
            cache = self._cache if everyone else kv.view(self._cache, index)
            before = self._mask[index]
            grown = torch.cat([before, before.new_ones(len(group), length)], dim=1)
            positions = before.sum(1, keepdim=True) + torch.arange(length, device=self._device)  # (k, n)
            self._encode(cache, grown, self._argmax[index, :length], positions)
            self._mask = grown if everyone else kv.append_rows(self._cache, self._mask, cache, index, length)
        self._mask = kv.trim(self._cache, self._mask)
        index = torch.tensor(waiting, device=self._device)
        self._canvas[index], self._live[index] = self._open_canvases(rows)
        self._steps[index] = 0
        self.stats.canvas_boundaries += 1
        self._charge(started, rows)

    def step(self, on_converged: Callable[[Any], None]) -> None:
        """One decoder pass over the denoising rows and one vectorised denoising step; commits finished canvases.

        `on_converged(member)` is called after the member's row committed a canvas (it may finish the row).
        """
        index_list = [i for i, r in enumerate(self.rows) if r.state is RowState.DENOISING]
        full = len(index_list) == len(self.members)
        rows_of: Any = slice(None) if full else torch.tensor(index_list, device=self._device)
        members = [self.members[i] for i in index_list]
        rows = [m.row for m in members]
        lengths = [r.canvas_length for r in rows]
        width = max(lengths)  # the pass computes no position that no row in it needs
        started = self._meter.start()
        logits = self._decode(rows_of, full, width)  # (b, w, V)
        steps = self._steps[rows_of]
        result = denoise(logits, self._canvas[rows_of, :width], self._argmax[rows_of, :width], steps,
                         self._scales[rows_of], [r.generator for r in rows], [r.greedy for r in rows],
                         self._sampling, lengths, [1.0 if r.request.top_p is None else r.request.top_p for r in rows])
        self._canvas[rows_of, :width] = result.canvas
        self._argmax[rows_of, :width] = result.argmax
        self._conditioning[rows_of, :width] = result.processed.to(self._embed_dtype)
        self._steps[rows_of] += 1
        done = [j for j, d in enumerate(result.done) if d]
        entropy = entropy_of(logits[done]).tolist() if done else []  # the model's own (temperature 1)
        canvases = result.argmax[done].tolist() if done else []
        committed_steps = self._steps[rows_of][done].tolist() if done else []
        for row in rows:
            row.decoder_passes += 1
        self._charge(started, rows)
        for k, j in enumerate(done):
            row = rows[j]
            row.step_cap_hit |= result.cap_hit[j]
            own = row.canvas_length
            row.commit(canvases[k][:own], entropy[k][:own], committed_steps[k], self._sampling)
            row.state = RowState.BOUNDARY
            on_converged(members[j])

    def _decode(self, rows_of: Any, full: bool, width: int) -> torch.Tensor:
        """The decoder pass over the rows `rows_of` (all of them when `full`), over the first `width` canvas
        positions: (b, w, V) float32 logits."""
        cache = self._cache if full else kv.view(self._cache, rows_of)
        mask = self._mask[rows_of]
        live = self._live[rows_of, :width]
        positions = mask.sum(1, keepdim=True) + torch.arange(width, device=self._device)  # (b, w)
        decoder_mask = None
        if self._padded(mask) or not bool(live.all()):  # else the decoder's fast path (no mask, as generate())
            decoder_mask = torch.cat([mask, live.to(mask.dtype)], dim=1)
        steps = self._steps[rows_of]
        has_conditioning = steps > 0  # (b,) a canvas's first step has no previous logits
        count = int(has_conditioning.sum())
        conditioning = conditioning_mask = None
        if count:
            conditioning = self._conditioning[rows_of, :width]
            conditioning_mask = None if count == len(steps) else has_conditioning
        out = self._model(cache=cache, decoder_input_ids=self._canvas[rows_of, :width],
                          decoder_position_ids=positions, decoder_attention_mask=decoder_mask,
                          self_conditioning_logits=conditioning, self_conditioning_mask=conditioning_mask)
        self.stats.decoder_passes += 1
        self.stats.row_passes += len(steps)
        self.stats.canvas_positions += len(steps) * width
        self.stats.rows_per_pass[len(steps)] += 1
        logits: torch.Tensor = out.logits.float()
        return logits

    def drop(self) -> None:
        """Removes finished and cancelled rows (and their cache rows) at once; trims padding nobody needs."""
        keep = [i for i, r in enumerate(self.rows) if r.state is not RowState.DONE and not r.cancelled]
        if len(keep) == len(self.members):
            return
        if not keep:
            self.clear()
            return
        index = torch.tensor(keep, device=self._device)
        self.members = [self.members[i] for i in keep]
        kv.select(self._cache, index)
        self._mask = kv.trim(self._cache, self._mask[index])
        self._canvas, self._argmax, self._live = self._canvas[index], self._argmax[index], self._live[index]
        self._steps, self._scales, self._conditioning = self._steps[index], self._scales[index], self._conditioning[index]

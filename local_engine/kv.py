"""A KV cache shared by rows of different lengths: left-padded, merged, sliced and trimmed by row.

The running batch keeps one `DynamicCache` whose rows are right-aligned: each row's real tokens are
contiguous and end at the last column, shorter rows are padded on the left and masked out by a
(B, T) mask. Rows go on to their next canvas at different times and with canvases of different
lengths; `append_rows` keeps the layout gap-free by shifting the rows that did not grow, so a row's
sliding-window layers always hold its own most recent tokens, as `generate()`'s would. Sliding-window
layers store only their last `sliding_window - 1` columns; every helper here keeps them consistent
with the full layers (`cumulative_length` = T).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F


def width(cache: Any) -> int:
    """T: columns in the cache (the full layers' length; sliding layers count it as cumulative_length)."""
    return int(cache.get_seq_length())


def _sliding(layer: Any) -> bool:
    return hasattr(layer, "cumulative_length") and hasattr(layer, "sliding_window")


def _stored(layer: Any, total: int) -> int:
    """How many of `total` columns this layer keeps."""
    return min(total, layer.sliding_window - 1) if _sliding(layer) else total


def _pad_left(t: torch.Tensor, columns: int) -> torch.Tensor:
    return F.pad(t, (0, 0, columns, 0)) if columns > 0 else t  # (B, H, S, D): pad S on the left


def merge(a: Any, mask_a: torch.Tensor, b: Any, mask_b: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """Stacks cache `b`'s rows under `a`'s (both left-padded to the wider), returning (cache, mask).

    `a` is reused and extended in place; `b` must come from the same model with the same layer kinds.
    """
    total = max(mask_a.shape[1], mask_b.shape[1])
    merged = []  # built before any layer changes, so a failure leaves `a` as it was
    for la, lb in zip(a.layers, b.layers, strict=True):
        keep = _stored(la, total)
        merged.append([torch.cat([_pad_left(x, keep - x.shape[-2]), _pad_left(y, keep - y.shape[-2])])
                       for x, y in ((la.keys, lb.keys), (la.values, lb.values))])
    for la, (keys, values) in zip(a.layers, merged, strict=True):
        la.keys, la.values = keys, values
        if _sliding(la):
            la.cumulative_length = total
    mask = torch.cat([F.pad(mask_a, (total - mask_a.shape[1], 0)), F.pad(mask_b, (total - mask_b.shape[1], 0))])
    return a, mask


def append_rows(cache: Any, mask: torch.Tensor, grown: Any, index: torch.Tensor, count: int) -> torch.Tensor:
    """Rows `index` of `cache` go on by `count` tokens, whose states an encoder pass appended to `grown`
    (a `view` of those rows); returns the (B, T + count) mask. The other rows gain `count` masked
    columns on the left, so every row stays right-aligned and none has a gap."""
    batch, total = mask.shape
    rows = torch.zeros(batch, dtype=torch.bool, device=mask.device)
    rows[index] = True
    for layer, new in zip(cache.layers, grown.layers, strict=True):
        keep = _stored(layer, total + count)
        assert count <= keep, "a canvas longer than a sliding window"
        for name in ("keys", "values"):
            old = getattr(layer, name)  # (B, H, S, D)
            tail = old.new_zeros(batch, old.shape[1], count, old.shape[3])
            tail[index] = getattr(new, name)[:, :, -count:, :]
            pad = old.new_zeros(batch, old.shape[1], count, old.shape[3])
            out = torch.where(rows[:, None, None, None], torch.cat([old, tail], dim=-2), torch.cat([pad, old], dim=-2))
            setattr(layer, name, out[:, :, out.shape[-2] - keep:, :])
        if _sliding(layer):
            layer.cumulative_length = total + count
    ones, zeros = mask.new_ones(batch, count), mask.new_zeros(batch, count)
    return torch.where(rows[:, None], torch.cat([mask, ones], dim=1), torch.cat([zeros, mask], dim=1))


def select(cache: Any, index: torch.Tensor) -> None:
    """Keeps only the rows in `index` (a copy per layer; the cache object stays the same)."""
    cache.batch_select_indices(index)


def fork(cache: Any) -> Any:
    """A cache sharing `cache`'s tensors but not its layers: extending one leaves the other as it was.

    Safe because every cache update (encoder pass, merge, select, trim) replaces a layer's tensors and
    none writes into them.
    """
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    return out


def view(cache: Any, index: torch.Tensor) -> Any:
    """A cache holding only the rows in `index`, for a read-only decoder pass; `cache` is untouched."""
    sub = fork(cache)
    sub.batch_select_indices(index)
    return sub


def trim(cache: Any, mask: torch.Tensor) -> torch.Tensor:
    """Drops the leading columns that are padding in every row (left behind by rows that left); returns the mask."""
    real = mask.bool().any(dim=0)  # (T,)
    if not bool(real.any()) or bool(real[0]):
        return mask
    first = int(real.long().argmax())
    total = mask.shape[1] - first
    for layer in cache.layers:
        keep = _stored(layer, total)
        layer.keys = layer.keys[:, :, layer.keys.shape[-2] - keep:, :]
        layer.values = layer.values[:, :, layer.values.shape[-2] - keep:, :]
        if _sliding(layer):
            layer.cumulative_length = total
    return mask[:, first:]

"""Stop strings: where one ends an answer, and how many generated tokens that takes."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def stop_index(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def tokens_through_stop(tokens: list[int], stops: Sequence[str], decode: Callable[[list[int]], str]) -> int:
    """The fewest leading tokens whose text holds a stop string (the whole list's text holds one)."""
    low, high = 0, len(tokens)
    while low < high:  # a longer prefix's text extends a shorter one's: binary search
        middle = (low + high) // 2
        if stop_index(decode(tokens[:middle]), stops) is None:
            low = middle + 1
        else:
            high = middle
    return high

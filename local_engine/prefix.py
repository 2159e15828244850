"""Prompt-prefix KV reuse: the encoder states of a shared prefix (a system prompt, earlier turns), computed once.

The encoder is causal, so a prefix's keys and values do not depend on what follows it: a request whose
prompt starts with a cached prefix only encodes the rest (its suffix) on top of a copy of the cached
states, and gets the same states as encoding the whole prompt. A request has up to two candidate
prefixes: its leading system messages (shared by every conversation of an app) and every turn before
its last message (a retried request, a fixed few-shot preamble); each counts when the chat template
renders it as a token prefix of the whole prompt (templates that render turns in order do) and it is
at least `min_tokens` long. The longest cached one is used; a longer one seen for the second time is
encoded on top of it and cached. A conversation's history is a new prefix every turn, so across turns
it reuses its system prompt only.

A prefix is cached the second time it is seen, not the first: a cached prefix costs its own encoder
pass and a per-request suffix pass (rows cannot share a suffix pass without gaps in the left-padded
cache), so a prefix that never comes back (a RAG context in the system prompt) should not pay that.
Memory is bounded by the total tokens cached, least recently used out first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

SEEN_KEPT = 4096  # prefixes seen once, remembered so that the second sighting caches them (hashes only)


@dataclass
class PrefixStats:
    """Plain counters for tests and benchmarks; they only grow."""

    hits: int = 0
    stored: int = 0
    evicted: int = 0
    reused_tokens: int = 0  # prompt tokens not encoded thanks to a hit


class PrefixCache:
    """LRU of one-row encoder caches keyed by their token ids; used only from the engine's worker thread."""

    def __init__(self, max_tokens: int, min_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.min_tokens = max(1, min_tokens)
        self.stats = PrefixStats()
        self._entries: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._tokens = 0

    @property
    def enabled(self) -> bool:
        return self.max_tokens >= self.min_tokens

    @property
    def tokens(self) -> int:
        """Tokens held by the cached prefixes."""
        return self._tokens

    def __len__(self) -> int:
        return len(self._entries)

    def usable(self, prefix_len: int, prompt_len: int) -> bool:
        """A prefix worth caching: long enough, fits the budget, and leaves a suffix to encode."""
        return self.enabled and self.min_tokens <= prefix_len <= self.max_tokens and prefix_len < prompt_len

    def get(self, key: tuple[int, ...]) -> Any | None:
        """The cached states of `key` (to be forked, never extended in place), or None."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            self.stats.reused_tokens += len(key)
        return entry

    def wanted(self, key: tuple[int, ...]) -> bool:
        """Whether a prefix that is not cached should be now: True on its second sighting."""
        digest = hash(key)
        if digest in self._seen:
            del self._seen[digest]
            return True
        self._seen[digest] = None
        if len(self._seen) > SEEN_KEPT:
            self._seen.popitem(last=False)
        return False

    def put(self, key: tuple[int, ...], cache: Any) -> None:
        """Stores `cache` (the caller's own copy) and evicts the least recently used beyond the budget."""
        if key in self._entries or len(key) > self.max_tokens:
            return
        self._entries[key] = cache
        self._tokens += len(key)
        self.stats.stored += 1
        while self._tokens > self.max_tokens:
            old, _ = self._entries.popitem(last=False)
            self._tokens -= len(old)
            self.stats.evicted += 1

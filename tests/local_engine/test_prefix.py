"""Prompt-prefix KV reuse: the cache's rules, exactness past the sliding window, and the engine using it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import DynamicCache

from local_engine import kv
from local_engine.engine import DiffusionEngine
from local_engine.interface import EngineConfig, GenerationRequest
from local_engine.loading import load_model
from local_engine.prefix import PrefixCache
from tests.local_engine.test_kv import decode, encode

SYSTEM = "You are a terse assistant for the billing team. Answer with the result only. " * 3  # > the window


def test_a_prefix_is_cached_on_its_second_sighting_and_evicted_least_recently_used() -> None:
    cache = PrefixCache(max_tokens=10, min_tokens=3)
    a, b, c = (1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11)
    assert not cache.usable(2, 9) and not cache.usable(4, 4) and not cache.usable(11, 20) and cache.usable(4, 5)
    assert cache.get(a) is None and not cache.wanted(a)  # first sighting: encoded with its request
    assert cache.wanted(a)  # second: worth caching
    cache.put(a, "A")
    cache.put(b, "B")
    assert cache.get(a) == "A" and cache.tokens == 8  # a is now the most recently used
    cache.put(c, "C")  # 11 tokens > 10: the least recently used (b) goes
    assert cache.get(b) is None and cache.get(c) == "C" and len(cache) == 2 and cache.tokens == 7
    assert cache.stats.hits == 2 and cache.stats.reused_tokens == 7 and cache.stats.evicted == 1
    assert not PrefixCache(max_tokens=0, min_tokens=64).enabled


def test_suffix_on_a_forked_prefix_decodes_as_the_whole_prompt(random_checkpoint: Path) -> None:
    torch.manual_seed(0)
    model = load_model(EngineConfig(model=str(random_checkpoint))).model
    window = model.config.text_config.sliding_window
    vocab, length = model.config.text_config.vocab_size, model.config.canvas_length
    with torch.inference_mode():
        prefix = torch.randint(3, vocab, (1, window + 20))  # the sliding layers are full before the suffix
        suffixes = [torch.randint(3, vocab, (1, n)) for n in (7, 30)]
        canvas = torch.randint(0, vocab, (1, length))
        entry = DynamicCache(config=model.config.text_config)
        encode(model, entry, torch.zeros(1, 0, dtype=torch.long), prefix)
        stored = [(layer.keys.clone(), layer.cumulative_length if hasattr(layer, "cumulative_length") else None)
                  for layer in entry.layers]
        for suffix in suffixes:
            whole = DynamicCache(config=model.config.text_config)
            mask = encode(model, whole, torch.zeros(1, 0, dtype=torch.long), torch.cat([prefix, suffix], dim=1))
            expected = decode(model, whole, mask, canvas)

            forked = kv.fork(entry)
            forked_mask = encode(model, forked, torch.ones(1, prefix.shape[1], dtype=torch.long), suffix)
            assert torch.equal(forked_mask, mask)
            torch.testing.assert_close(decode(model, forked, forked_mask, canvas), expected, atol=2e-4, rtol=0)
        for layer, (keys, cumulative) in zip(entry.layers, stored, strict=True):  # the entry never grew
            assert torch.equal(layer.keys, keys)
            assert getattr(layer, "cumulative_length", None) == cumulative


def conversation(question: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


async def answers(engine: DiffusionEngine, questions: list[str], tag: str) -> list[Any]:
    """One request first (so the prefix is seen), then the rest together, seeded."""
    first = await engine.generate(GenerationRequest(f"{tag}0", conversation(questions[0]), max_tokens=20, seed=0))
    rest = await asyncio.gather(*(engine.generate(GenerationRequest(f"{tag}{i}", conversation(q), max_tokens=20,
                                                                    seed=i))
                                  for i, q in enumerate(questions[1:], start=1)))
    return [first, *rest]


async def test_the_engine_reuses_a_shared_system_prompt_with_the_same_answers(random_checkpoint: Path) -> None:
    questions = ["What is 2 + 2?", "Sort: 3, 1", "Uppercase user_id.", "Sort: 9, 4, 7", "What is 5 - 1?"]
    engines = {}
    for name, tokens in (("off", 0), ("on", 4096)):
        config = EngineConfig(model=str(random_checkpoint), max_tokens=64, prefix_cache_tokens=tokens,
                              prefix_cache_min_tokens=32, device_usd_per_hour=3600.0)
        engines[name] = DiffusionEngine(load_model(config), config)
        await engines[name].start()
    try:
        off = await answers(engines["off"], questions, "off")
        on = await answers(engines["on"], questions, "on")
    finally:
        for engine in engines.values():
            await engine.stop()
    assert [c.text for c in on] == [c.text for c in off]
    assert [c.prompt_tokens for c in on] == [c.prompt_tokens for c in off]
    (cached,) = engines["on"]._prefix_cuts(conversation("x"), engines["on"]._prompt_ids(conversation("x")))
    assert cached > engines["on"].prefixes.min_tokens
    # The first sighting is encoded whole; the second caches the prefix; the three after it reuse it.
    assert [c.cached_tokens for c in on].count(cached) == 3 and on[0].cached_tokens == 0
    assert all(c.cached_tokens == 0 for c in off)
    stats = engines["on"].prefixes.stats
    assert (stats.stored, stats.hits, stats.reused_tokens) == (1, 3, 3 * cached)
    assert sum(c.device_seconds for c in on) == pytest.approx(engines["on"].meter.total_seconds, rel=1e-9)


async def test_single_turn_prompts_and_short_prefixes_are_encoded_whole(random_checkpoint: Path) -> None:
    config = EngineConfig(model=str(random_checkpoint), max_tokens=8, prefix_cache_min_tokens=32)
    engine = DiffusionEngine(load_model(config), config)
    assert engine._prefix_cuts([{"role": "user", "content": "hi"}], engine._prompt_ids([{"role": "user",
                                                                                          "content": "hi"}])) == ()
    await engine.start()
    try:
        short = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
        for i in range(3):
            assert (await engine.generate(GenerationRequest(f"s{i}", short, seed=i))).cached_tokens == 0
    finally:
        await engine.stop()
    assert engine.prefixes.stats.stored == 0 and len(engine.prefixes) == 0


async def test_conversations_share_their_system_prompt_and_a_retried_history_is_reused(random_checkpoint: Path,
                                                                                        ) -> None:
    config = EngineConfig(model=str(random_checkpoint), max_tokens=8, prefix_cache_min_tokens=32)
    engine = DiffusionEngine(load_model(config), config)
    system = {"role": "system", "content": SYSTEM}

    def chat(topic: str) -> list[dict[str, str]]:
        return [system, {"role": "user", "content": f"Tell me about {topic} in one word."},
                {"role": "assistant", "content": f"{topic.capitalize()} is fine, thanks for asking."},
                {"role": "user", "content": "And in two words?"}]

    system_cut, history_cut = engine._prefix_cuts(chat("tea"), engine._prompt_ids(chat("tea")))
    assert system_cut == len(engine._render([system], generation_prompt=False)) and history_cut > system_cut
    await engine.start()
    try:
        async def cached(rid: str, messages: list[dict[str, str]]) -> int:
            return (await engine.generate(GenerationRequest(rid, messages, seed=1))).cached_tokens

        # tea: all first sightings; coffee: the system prompt's second (cached now); cocoa: reuses it;
        # tea again: its history's second sighting, encoded on the cached system prompt and cached;
        # tea a third time: the whole history comes from the cache.
        assert [await cached("a", chat("tea")), await cached("b", chat("coffee"))] == [0, 0]
        assert await cached("c", chat("cocoa")) == system_cut
        assert await cached("d", chat("tea")) == system_cut
        assert await cached("e", chat("tea")) == history_cut
    finally:
        await engine.stop()
    assert engine.prefixes.stats.stored == 2 and len(engine.prefixes) == 2

"""Token counts of hosted answers: the upstream's `usage` read and checked, or counted here without it.

An upstream that omits `usage`, a stream cut short, a client gone mid-stream: the tokens were still
spent and billed by the provider. LiteLLM's proxy counts them itself in that case; so does this, with
tiktoken and the encoding files LiteLLM bundles (nothing is downloaded), so that such a request is
priced and counts against budgets instead of being recorded as a silent $0. Rows priced from an
estimate say so (`usage_estimated` in the ledger detail).
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

# OpenAI's chat format: each message costs its content plus ~3 tokens of framing; the reply is primed with 3.
_PER_MESSAGE = 3
_REPLY_PRIMING = 3
_FALLBACK_ENCODING = "cl100k_base"


def _bundled_encodings() -> Path | None:
    """LiteLLM's directory of tiktoken files, found without importing LiteLLM (which takes seconds)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return folder if folder.is_dir() else None


def message_text(message: Mapping[str, Any]) -> str:
    """The text of one chat message or response message: string content, text parts, tool-call arguments."""
    content = message.get("content")
    parts: list[str] = []
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts.extend(str(p.get("text") or "") for p in content if isinstance(p, Mapping))
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            parts.append(f"{function.get('name') or ''}{function.get('arguments') or ''}")
    return "".join(parts)


def answer_text(body: Mapping[str, Any]) -> str:
    """Every choice's message text of a chat.completion body."""
    return "".join(message_text(c.get("message") or {}) for c in body.get("choices") or () if isinstance(c, Mapping))


def delta_text(chunk: Mapping[str, Any]) -> str:
    """The text a chat.completion.chunk adds, over all its choices."""
    return "".join(message_text(c.get("delta") or {}) for c in chunk.get("choices") or () if isinstance(c, Mapping))


class TokenEstimator:
    """Counts tokens the way the provider would, as closely as an offline tokenizer can."""

    def __init__(self) -> None:
        self._encodings: dict[str, Any] = {}

    def _encoding(self, model: str) -> Any | None:
        try:
            import tiktoken
        except ImportError:  # pragma: no cover - tiktoken comes with LiteLLM
            return None
        try:
            name = tiktoken.encoding_name_for_model(model.rsplit("/", 1)[-1])
        except KeyError:
            name = _FALLBACK_ENCODING
        if name not in self._encodings:
            folder = _bundled_encodings()
            if folder is not None:  # what LiteLLM itself sets when it is imported
                os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(folder))
            try:
                self._encodings[name] = tiktoken.get_encoding(name)
            except Exception:  # noqa: BLE001 - no file offline: fall back to the character rule below
                self._encodings[name] = None
        return self._encodings[name]

    def count(self, model: str, text: str) -> int:
        """Tokens of a text; ~4 characters a token when no tokenizer file is available."""
        if not text:
            return 0
        encoding = self._encoding(model)
        if encoding is None:
            return math.ceil(len(text) / 4)
        return len(encoding.encode(text, disallowed_special=()))

    def prompt_tokens(self, model: str, messages: Sequence[Mapping[str, Any]]) -> int:
        return _REPLY_PRIMING + sum(_PER_MESSAGE + self.count(model, str(m.get("role") or ""))
                                    + self.count(model, message_text(m)) for m in messages)

    def usage(self, model: str, messages: Sequence[Mapping[str, Any]], answer: Iterable[str]) -> tuple[int, int]:
        """(prompt_tokens, completion_tokens) estimated for a request and the answer text it got."""
        return self.prompt_tokens(model, messages), self.count(model, "".join(answer))


T = TypeVar("T")


async def counted(count: Callable[..., T], *args: Any) -> T:
    """Tokens counted off the event loop (a 4 MB prompt takes ~0.4 s, which would stall every other request);
    in it only when cancelled again (the server stopping: the count must still reach the ledger row)."""
    counting = asyncio.ensure_future(asyncio.to_thread(count, *args))
    try:
        return await asyncio.shield(counting)
    except asyncio.CancelledError:
        return count(*args)


MAX_REPORTED_TOKENS = 2**31 - 1  # the ledger's token columns; more than any context window times any `n`


def _token_count(value: Any) -> int | None:
    if isinstance(value, float) and value.is_integer():  # `12.0` from a proxy that went through floats
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_REPORTED_TOKENS:
        return value
    return None


def usage_of(body: Mapping[str, Any]) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) from an OpenAI response or usage chunk; None when absent or not
    believable (null, missing, negative, not an integer, absurdly large): the tokens are then counted here
    rather than recorded as $0, a negative bill, or a row the ledger cannot store."""
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = _token_count(usage.get("prompt_tokens")), _token_count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    return prompt, completion


def embedding_usage(body: Mapping[str, Any]) -> int | None:
    """An embeddings answer's `usage.prompt_tokens`; None when absent or not believable (0 for input that has
    some: a placeholder, which would be a silent $0)."""
    usage = body.get("usage")
    tokens = _token_count(usage.get("prompt_tokens")) if isinstance(usage, Mapping) else None
    return tokens or None


def prompt_cache_of(body: Mapping[str, Any]) -> tuple[int, int]:
    """Of the prompt tokens, (read, written): those the provider read from its prompt cache, billed at a lower
    rate (OpenAI's `usage.prompt_tokens_details.cached_tokens`; LiteLLM reports Anthropic's cache reads there, and
    as `cache_read_input_tokens`), and those it wrote to it, billed above the input price (Anthropic: 1.25x;
    LiteLLM's `usage.cache_creation_input_tokens`, also `prompt_tokens_details.cache_creation_tokens`). Each 0
    when absent or not believable (reads more than the prompt, writes more than its uncached rest): full price."""
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        return 0, 0
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, Mapping) else {}
    read_value = details.get("cached_tokens")
    read = _token_count(usage.get("cache_read_input_tokens") if read_value is None else read_value)
    write_value = usage.get("cache_creation_input_tokens")
    written = _token_count(details.get("cache_creation_tokens") if write_value is None else write_value)
    prompt = _token_count(usage.get("prompt_tokens"))
    if prompt is None:
        return 0, 0
    read = read if read is not None and read <= prompt else 0
    return read, written if written is not None and written <= prompt - read else 0


def believable(usage: tuple[int, int] | None, answer: str) -> tuple[int, int] | None:
    """`usage` unless it is a placeholder: no prompt tokens (every chat request has some), or none for an answer
    that has text. Believed, it would be a silent $0 for tokens the provider billed."""
    if usage is None or usage[0] == 0 or (usage[1] == 0 and answer):
        return None
    return usage


def usage_is_invalid(body: Mapping[str, Any]) -> bool:
    """The upstream sent a `usage` that `usage_of` could not believe (for the ledger's detail)."""
    return body.get("usage") is not None and usage_of(body) is None

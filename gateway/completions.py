"""Chat answers as OpenAI's legacy `text_completion` objects: a completion is served as a chat request, whatever
route, cache or cascade answered it, and only its rendering differs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson

DATA = b"data: "
# What a text_completion keeps of a chat answer besides its choices (usage, and draftgate's signals on the last chunk)
KEPT = ("created", "model", "system_fingerprint", "usage", "draftgate")


def completion_id(chat_id: Any) -> str:
    """`cmpl-...` for a chat answer's `chatcmpl-...` (the same suffix: one request id, as the ledger has it)."""
    text = str(chat_id or "")
    return "cmpl-" + (text.removeprefix("chatcmpl-") if text.startswith("chatcmpl-") else text)


def completion_logprobs(chat: Any, offset: int = 0) -> tuple[dict[str, Any] | None, int]:
    """Chat's `logprobs.content` as the completions API's token lists (`text_offset` counted from `offset`, the
    choice's text so far), and the offset after these tokens; None when the answer has none."""
    if not isinstance(chat, dict) or not isinstance(chat.get("content"), list):
        return None, offset
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top: list[dict[str, float]] = []
    offsets: list[int] = []
    for entry in chat["content"]:
        token = str(entry.get("token", ""))
        tokens.append(token)
        token_logprobs.append(entry.get("logprob"))
        top.append({str(alt.get("token", "")): alt.get("logprob") for alt in entry.get("top_logprobs") or ()})
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}, offset


def text_completion(answer: dict[str, Any]) -> dict[str, Any]:
    """A chat.completion as a text_completion: each choice's message content as its `text`."""
    body: dict[str, Any] = {"id": completion_id(answer.get("id")), "object": "text_completion"}
    body |= {field: answer[field] for field in KEPT if field in answer}
    choices = []
    for position, choice in enumerate(answer.get("choices") or ()):
        message = choice.get("message") or {}
        logprobs, _ = completion_logprobs(choice.get("logprobs"))
        choices.append({"text": message.get("content") or "", "index": choice.get("index", position),
                        "logprobs": logprobs, "finish_reason": choice.get("finish_reason")})
    body["choices"] = choices
    return body


class _ChunkRenderer:
    """Chat chunks as text_completion chunks, keeping each choice's text offset for its logprobs."""

    def __init__(self) -> None:
        self._offsets: dict[int, int] = {}

    def render(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """The text_completion chunk, or None for one that carries nothing a completion has (the role opening)."""
        choices = []
        for part in chunk.get("choices") or ():
            index = part.get("index", 0)
            text = (part.get("delta") or {}).get("content") or ""
            logprobs, self._offsets[index] = completion_logprobs(part.get("logprobs"), self._offsets.get(index, 0))
            if text or logprobs or part.get("finish_reason"):
                choices.append({"text": text, "index": index, "logprobs": logprobs,
                                "finish_reason": part.get("finish_reason")})
        if not choices and not isinstance(chunk.get("usage"), dict) and "draftgate" not in chunk:
            return None
        body: dict[str, Any] = {"id": completion_id(chunk.get("id")), "object": "text_completion"}
        return body | {field: chunk[field] for field in KEPT if field in chunk} | {"choices": choices}


async def text_completion_events(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The pipeline's chat SSE events as text_completion events; `[DONE]` and in-band errors pass as they are.
    Closing this closes the pipeline's stream at once, so its ledger row is recorded then, not when collected."""
    renderer = _ChunkRenderer()
    async with aclosing(events) as chat_events:  # type: ignore[type-var]
        async for event in chat_events:
            payload = event[len(DATA):].strip() if event.startswith(DATA) else b""
            if not payload.startswith(b"{"):
                yield event
                continue
            chunk = orjson.loads(payload)
            if "error" in chunk:
                yield event
                continue
            rendered = renderer.render(chunk)
            if rendered is not None:
                yield DATA + orjson.dumps(rendered) + b"\n\n"

"""The exact-match response cache in front of routing: which requests it may answer, and what it stores.

A request's key is a hash of its caller's scope (team, else key; the master key and open mode have their own) and
the canonical JSON of everything that can change its answer: the validated body without `stream`,
`stream_options`, `user`, `metadata` and `cache`. The requested alias is part of it, not where the policy would
send it: the cache answers before routing, for the same (scope, alias, body). Only whole, successful answers are
stored, after they were sent; a hit is served with a fresh `id` and `created`, as its own response.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

import policies
from gateway.auth import Principal
from gateway.schemas import ChatRequest
from ledger import CachedAnswer, LedgerError, ResponseCache
from router import Outcome

log = logging.getLogger("draftgate")
NOT_IN_KEY = {"stream", "stream_options", "user", "metadata", "cache"}  # how it is delivered, or who asked
CacheState = Literal["hit", "miss", "skip"]


def cache_scope(principal: Principal) -> str:
    """Whose answers a caller may be given: its team's, else its key's; the master key and open mode each their own."""
    if principal.team is not None:
        return f"team:{principal.team}"
    if principal.key_id is not None:
        return f"key:{principal.key_id}"
    return "master" if principal.is_master else "open"


# Fields some clients always send with the value every route gives them when absent (LangChain's ChatOpenAI sends
# `n: 1`): the same request either way, so the same entry. Not `temperature` or `top_p`: a vLLM upstream fills
# absent ones from the model's generation config, so there "absent" and 1 can differ.
NEUTRAL: dict[str, object] = {"n": 1, "logprobs": False, "presence_penalty": 0, "frequency_penalty": 0}


def cache_key(scope: str, body: ChatRequest) -> str:
    """sha256 of the scope and the request's canonical JSON (sorted keys; a field sent as null, or with the value
    it has when absent, is one left out)."""
    request = body.model_dump(exclude_none=True, exclude=NOT_IN_KEY)
    for name, neutral in NEUTRAL.items():
        value = request.get(name)
        if value == neutral and isinstance(value, bool) is isinstance(neutral, bool):  # 0 is not False here
            del request[name]
    return hashlib.sha256(orjson.dumps([scope, request], option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Lookup:
    """What the cache decided for one request: its `x-draftgate-cache` state, the entry on a hit, and whether the
    answer may be stored (and for how long)."""

    key: str
    scope: str
    state: CacheState
    entry: CachedAnswer | None
    store: bool
    ttl_s: float


def _merge_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    """Adds a streamed tool-call fragment (its id and name once, its arguments in pieces) to the calls so far."""
    index: int = delta["index"] if isinstance(delta.get("index"), int) else len(calls)
    call = calls.setdefault(index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
    for field in ("id", "type"):
        if delta.get(field):
            call[field] = delta[field]
    function = delta.get("function") or {}
    for field in ("name", "arguments"):
        if isinstance(function.get(field), str):
            call["function"][field] += function[field]


def _add_delta(choice: dict[str, Any], delta: dict[str, Any], calls: dict[int, dict[str, Any]]) -> None:
    message = choice["message"]
    if isinstance(delta.get("role"), str):
        message["role"] = delta["role"]
    for field in ("content", "refusal"):
        if isinstance(delta.get(field), str):
            message[field] = (message.get(field) or "") + delta[field]
    for call in delta.get("tool_calls") or ():
        if isinstance(call, dict):
            _merge_call(calls, call)
    if isinstance(delta.get("function_call"), dict):
        old = message.get("function_call") or {"name": "", "arguments": ""}
        new = delta["function_call"]
        message["function_call"] = {k: old[k] + new[k] if isinstance(new.get(k), str) else old[k] for k in old}


def assembled(payloads: Sequence[bytes], outcome: Outcome) -> dict[str, Any]:
    """The chat.completion object a stream's chunks add up to (what the same request answers without `stream`);
    its usage is the stream's usage chunk, else the ledger's figures for it."""
    body: dict[str, Any] = {"object": "chat.completion"}
    choices: dict[int, dict[str, Any]] = {}
    calls: dict[int, dict[int, dict[str, Any]]] = {}
    extension: dict[str, Any] = {}
    for payload in payloads:
        chunk = orjson.loads(payload)
        for field in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if field in chunk and field not in body:
                body[field] = chunk[field]
        if isinstance(chunk.get("usage"), dict):
            body["usage"] = chunk["usage"]
        if isinstance(chunk.get("draftgate"), dict):
            extension.update(chunk["draftgate"])
        for part in chunk.get("choices") or ():
            index = part.get("index") if isinstance(part.get("index"), int) else 0
            choice = choices.setdefault(index, {"index": index, "message": {"role": "assistant", "content": None,
                                                                             "refusal": None},
                                                "logprobs": None, "finish_reason": None})
            _add_delta(choice, part.get("delta") or {}, calls.setdefault(index, {}))
            if isinstance(part.get("logprobs"), dict):
                logprobs = choice["logprobs"] or {"content": [], "refusal": None}
                logprobs["content"] = [*(logprobs.get("content") or []), *(part["logprobs"].get("content") or [])]
                choice["logprobs"] = logprobs
            if part.get("finish_reason"):
                choice["finish_reason"] = part["finish_reason"]
    for index, choice in choices.items():
        if calls.get(index):
            choice["message"]["tool_calls"] = [calls[index][i] for i in sorted(calls[index])]
            choice["message"]["content"] = choice["message"]["content"] or None
    body["choices"] = [choices[i] for i in sorted(choices)]
    body.setdefault("usage", {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
                              "total_tokens": outcome.prompt_tokens + outcome.completion_tokens})
    if extension:
        body["draftgate"] = extension
    return body


def served(entry: CachedAnswer, request_id: str) -> dict[str, Any]:
    """The stored answer as this request's response: a fresh id and time, and where it came from."""
    body = {**entry.body, "id": f"chatcmpl-{request_id}", "created": int(time.time())}
    body["draftgate"] = {**(body.get("draftgate") or {}), "cache": {"source_request_id": entry.request_id}}
    return body


async def replayed(body: dict[str, Any], *, wants_usage: bool) -> AsyncIterator[bytes]:
    """A stored answer as OpenAI stream chunks: each choice's role, its whole message in one chunk, its finish;
    then the usage chunk when the client asked for it."""
    base = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"],
            "model": body.get("model"), "system_fingerprint": body.get("system_fingerprint")}
    usage_field = {"usage": None} if wants_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None,
              **more: Any) -> bytes:
        return orjson.dumps({**base, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                                  "finish_reason": finish}], **usage_field, **more})

    choices = body.get("choices") or []
    for position, choice in enumerate(choices):
        index, message = choice.get("index", position), choice.get("message") or {}
        # as OpenAI opens a choice: content "" for text, null for tool calls or a refusal (the SDK's accumulated
        # message has the content the JSON answer has, not "")
        opening = "" if isinstance(message.get("content"), str) else None
        yield chunk(index, {"role": message.get("role") or "assistant", "content": opening})
        delta = {field: message[field] for field in ("content", "refusal", "function_call") if message.get(field)}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        if delta or choice.get("logprobs"):
            yield chunk(index, delta, logprobs=choice.get("logprobs"))
        last = position == len(choices) - 1
        yield chunk(index, {}, choice.get("finish_reason") or "stop",
                    **({"draftgate": body["draftgate"]} if last and "draftgate" in body else {}))
    if wants_usage:
        yield orjson.dumps({**base, "choices": [], "usage": body.get("usage")})


def _tokens(body: dict[str, Any], outcome: Outcome) -> tuple[int, int]:
    """The answer's own usage (a hit is billed the tokens of the answer it repeats), else the row's figures."""
    usage = body.get("usage")
    if isinstance(usage, dict) and all(isinstance(usage.get(k), int) for k in ("prompt_tokens", "completion_tokens")):
        return usage["prompt_tokens"], usage["completion_tokens"]
    return outcome.prompt_tokens, outcome.completion_tokens


class CacheFront:
    """Looks requests up before routing and stores finished answers in the background; built only when the config
    enables the cache, so a gateway without it never touches the table."""

    def __init__(self, store: ResponseCache, config: policies.CacheConfig) -> None:
        self._store = store
        self._ttl_s = config.ttl_s
        self._writing: set[asyncio.Task[None]] = set()

    async def lookup(self, body: ChatRequest, principal: Principal) -> Lookup:
        """The request's entry, unless it said `no-cache`; a database that does not answer is a miss, not an error:
        the request is served as without the cache."""
        control = body.cache
        scope = cache_scope(principal)
        key = cache_key(scope, body)
        store = not (control and control.no_store)
        ttl_s = float(control.ttl if control and control.ttl is not None else self._ttl_s)
        if control and control.no_cache:
            return Lookup(key, scope, "skip", None, store, ttl_s)
        try:
            entry = await asyncio.to_thread(self._store.get, key, datetime.now(UTC),
                                            control.s_maxage if control else None)
        except LedgerError as exc:
            log.warning("response cache: lookup failed, serving without it: %s", exc)
            return Lookup(key, scope, "miss", None, False, ttl_s)
        return Lookup(key, scope, "hit" if entry else "miss", entry, store, ttl_s)

    def store(self, lookup: Lookup, request_id: str, body: dict[str, Any], outcome: Outcome,
              reference_cost_usd: float | None) -> None:
        """Stores a finished 200 answer in the background (off the response path), when the request allows it. A
        draft served unverified because its escalation target was down is not stored: it would outlive the outage."""
        if not lookup.store or "unverified_draft" in outcome.detail:
            return
        now = datetime.now(UTC)
        prompt_tokens, completion_tokens = _tokens(body, outcome)
        answer = CachedAnswer(key=lookup.key, scope=lookup.scope, created_at=now,
                              expires_at=now + timedelta(seconds=lookup.ttl_s), request_id=request_id,
                              route=outcome.route.value, provider_model=outcome.provider_model,
                              prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                              reference_cost_usd=reference_cost_usd, body=orjson.loads(orjson.dumps(body)))
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._store.put, answer))
        self._writing.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("response cache: could not store an answer: %s", task.exception())

    @property
    def pending(self) -> int:
        """Answers still being written."""
        return len(self._writing)

    async def drain(self) -> None:
        """Waits for pending writes (shutdown)."""
        while self._writing:
            await asyncio.gather(*list(self._writing), return_exceptions=True)

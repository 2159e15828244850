"""Hosted calls to providers that need request translation (Anthropic, Bedrock, Vertex, ...), via LiteLLM."""

from __future__ import annotations

import asyncio
import base64
import importlib
import struct
import traceback
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from router.transport import (
    AttemptFailed,
    StreamBroken,
    UpstreamStream,
    has_usable_choices,
    has_usable_embeddings,
    is_retryable_status,
    redact,
    retry_after_seconds,
    short_text,
)

if TYPE_CHECKING:
    from router.hosted import HostedModel

# OpenAI's embeddings fields the gateway serves itself on this path: most of LiteLLM's embedding providers (Gemini,
# Jina, Fireworks, Ollama; Mistral, Cohere, Vertex, Voyage for `user`) refuse them with UnsupportedParamsError, and
# the openai SDK sends `encoding_format` on every call. `user` is recorded in the ledger; base64 is encoded here.
SERVED_HERE = ("encoding_format", "user")


def _base64_vectors(data: dict[str, Any]) -> None:
    """Each float vector as OpenAI sends it for `encoding_format: base64` (little-endian float32), in place."""
    for item in data["data"]:
        vector = item.get("embedding")
        if isinstance(vector, list) and all(isinstance(v, (int, float)) for v in vector):
            item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


class _LiteLLMStream:
    def __init__(self, chunks: Any, model: HostedModel) -> None:
        self._chunks = chunks
        self._model = model
        self.done = False  # LiteLLM's iterator has no `[DONE]`: its end is the answer's end only with finish_reason

    async def lines(self) -> AsyncIterator[bytes]:
        try:
            count = 0
            async for chunk in self._chunks:
                count += 1
                if count % 16 == 0:  # LiteLLM hands out buffered chunks without awaiting: give the loop a turn, or
                    await asyncio.sleep(0)  # a fast stream starves every other task, its client's hang-up included
                data = chunk.model_dump(exclude_none=True)
                if "usage" in data and not self._provider_sent_usage():
                    # LiteLLM's own count (its tokenizer, at the stream's end) of tokens the provider did not
                    # report: dropped, so the executor counts them and marks the row `usage_estimated`, as on
                    # the direct path, instead of recording an estimate as the provider's bill
                    del data["usage"]
                    if not data.get("choices"):
                        continue
                yield orjson.dumps(openai_nulls(data, "delta"))
            # LiteLLM's stream wrapper relays one finish_reason: with `n` > 1 the later choices' are dropped. It
            # saw the upstream finish, and ended without an error: the answer is whole, as `[DONE]` says it.
            self.done = getattr(self._chunks, "received_finish_reason", None) is not None
        except Exception as exc:  # LiteLLM raises provider-specific types
            message = redact(f"upstream {self._model.alias} stream broke: {_message(exc)}", self._model)
            raise StreamBroken(message, retryable=False, error_type="stream_interrupted") from exc

    def _provider_sent_usage(self) -> bool:
        """Whether any chunk LiteLLM read from the provider carried usage (its wrapper keeps them in `chunks`, as
        its own `_reported_total_usage` reads them); True when that cannot be told, as before."""
        chunks = getattr(self._chunks, "chunks", None)
        if not isinstance(chunks, list):
            return True
        return any(getattr(chunk, "usage", None) is not None for chunk in chunks)

    async def aclose(self) -> None:
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()


_TRACEBACK = "\nTraceback (most recent call last):"
# LiteLLM's functions that turn a provider's answer into its own objects (the providers' configs share
# `transform_response`; older handlers use the other names)
_RESPONSE_READERS = frozenset({"transform_response", "transform_parsed_response", "process_response",
                               "convert_to_model_response_object"})


def openai_nulls(data: dict[str, Any], part: str) -> dict[str, Any]:
    """LiteLLM's object dumped without its many None fields, with the nulls OpenAI always sends put back: a tool
    call's `message.content`, each choice's `logprobs` and, in every chunk, `finish_reason`. Clients test them
    against null (`finish_reason !== null` ends a JS stream loop at its first chunk); LiteLLM's empty
    `provider_specific_fields` go."""
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        choice.setdefault("finish_reason", None)
        choice.setdefault("logprobs", None)
        body = choice.get(part)
        for holder in (choice, body if isinstance(body, dict) else {}):
            if holder.get("provider_specific_fields") in ({}, None):
                holder.pop("provider_specific_fields", None)
        if part == "message" and isinstance(body, dict):
            body.setdefault("content", None)
    return data


def _message(exc: BaseException) -> str:
    """LiteLLM's message without the traceback (file paths, source lines) it appends to an error it did not map:
    that is for a log, not for the gateway's client."""
    return str(getattr(exc, "message", None) or exc).split(_TRACEBACK, 1)[0].strip()


def _untranslatable(exc: BaseException) -> bool:
    """LiteLLM failed in its own Python code (a tool type or content part it cannot translate for the provider: a
    ValueError, KeyError ... it wraps as an APIConnectionError with status 500), not on the network."""
    origin = exc.__cause__ or exc.__context__
    return (type(exc).__name__ == "APIConnectionError" and origin is not None
            and type(origin).__module__ == "builtins" and not isinstance(origin, (OSError, TimeoutError, ImportError)))


def _answer_unreadable(exc: BaseException) -> bool:
    """LiteLLM's own code failed reading the provider's answer (a 200 it cannot parse: an `api_base` that answers
    in another provider's shape, a provider's new field), not translating the request: the provider did the work,
    so it is a billed 502 like any broken answer, not a 400 blaming the client's request."""
    origin = exc.__cause__ or exc.__context__
    frames = traceback.extract_tb(origin.__traceback__) if origin is not None else []
    return any(frame.name in _RESPONSE_READERS for frame in frames)


def _missing_sdk(exc: BaseException) -> bool:
    """The provider needs a package this install lacks (Vertex AI's `google-auth`): the gateway's setup, not the
    request's fault, and no retry installs it."""
    return isinstance(exc.__cause__ or exc.__context__, ImportError)


def _retry_after(exc: Exception) -> float | None:
    """The upstream's `Retry-After`, which LiteLLM keeps on its exception as the provider's response headers:
    without it a 429 was retried at once and relayed with `retry-after: 1`, whatever the provider asked for."""
    headers = getattr(exc, "litellm_response_headers", None)
    if not isinstance(headers, Mapping):
        return None
    return retry_after_seconds({str(k).lower(): str(v) for k, v in headers.items()})


def _provider_error(text: str) -> tuple[str, str | None, str | None] | None:
    """(message, code, param) of the provider's own error body, which LiteLLM quotes after its prefix
    (`litellm.BadRequestError: Hosted_vllmException - {"error": {...}}`); None when it quotes none."""
    _, quoted, rest = text.partition(" - ")
    try:
        data = orjson.loads(rest) if quoted and rest.lstrip().startswith("{") else None
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str) or not error["message"]:
        return None
    return error["message"], short_text(error.get("code")), short_text(error.get("param"))


def _attempt_failed(exc: Exception, model: HostedModel) -> AttemptFailed:
    """The attempt's failure as the hosted client retries and reports it, from LiteLLM's exception: the provider's
    own message, `code` and `param` when LiteLLM quotes its error body (clients branch on them, as on the direct
    path's `context_length_exceeded`), else LiteLLM's words."""
    status = getattr(exc, "status_code", None)
    status = int(status) if isinstance(status, int) else None
    retryable = status is None or is_retryable_status(status)
    untranslatable = _untranslatable(exc)
    unreadable = untranslatable and _answer_unreadable(exc)  # LiteLLM's parser failed on a provider's 200
    billed = (status is not None and 200 <= status < 300) or unreadable
    if billed:  # a 200 LiteLLM could not read (a body cut short): the provider did the work, as direct
        status, retryable = 502, True
    if untranslatable and not unreadable:  # the same request fails the same way: neither retried nor a 502
        status, retryable = None, False
    elif _missing_sdk(exc):  # a 502 at once (its fallbacks may answer), not a 400 blaming the request
        status, retryable = 500, False
    message = _message(exc)
    code, param = short_text(getattr(exc, "code", None)), short_text(getattr(exc, "param", None))
    if (quoted := _provider_error(message)) is not None:
        message, code, param = quoted[0], quoted[1] or code, quoted[2] or param
    return AttemptFailed(redact(message, model), status_code=status, retryable=retryable,
                         error_type=type(exc).__name__, retry_after_s=_retry_after(exc), billed=billed,
                         code=code, param=param)


class LiteLLMTransport:
    """Providers that need request translation (Anthropic, Bedrock, Vertex, ...) via LiteLLM."""

    def __init__(self) -> None:
        self._module: Any = None

    def _litellm(self) -> Any:
        # Imported on first use: importing LiteLLM costs seconds that OpenAI-only setups never pay.
        if self._module is None:
            self._module = importlib.import_module("litellm")
            self._module.suppress_debug_info = True
        return self._module

    async def _call(self, model: HostedModel, body: dict[str, Any], stream: bool) -> Any:
        litellm = self._litellm()
        kwargs = {k: v for k, v in body.items() if k not in ("model", "stream")}
        try:
            return await litellm.acompletion(model=model.model, api_base=model.api_base, api_key=model.api_key,
                                             timeout=model.timeout_s, num_retries=0, stream=stream, **kwargs)
        except Exception as exc:  # LiteLLM maps providers onto its own exception zoo
            raise _attempt_failed(exc, model) from exc

    async def embed(self, model: HostedModel, body: dict[str, Any]) -> dict[str, Any]:
        """`litellm.aembedding` without the fields served here, its answer dumped as OpenAI's embeddings list."""
        litellm = self._litellm()
        kwargs = {k: v for k, v in body.items() if k != "model" and k not in SERVED_HERE}
        try:
            response = await litellm.aembedding(model=model.model, api_base=model.api_base, api_key=model.api_key,
                                                timeout=model.timeout_s, num_retries=0, **kwargs)
        except Exception as exc:  # as for completions
            raise _attempt_failed(exc, model) from exc
        data = response.model_dump(exclude_none=True)
        if not has_usable_embeddings(data):
            raise AttemptFailed(f"upstream {model.alias} sent no embeddings", status_code=502, retryable=True,
                                billed=True)
        if body.get("encoding_format") == "base64":
            _base64_vectors(data)
        return data

    async def complete(self, model: HostedModel, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._call(model, body, stream=False)
        data = openai_nulls(response.model_dump(exclude_none=True), "message")
        if not has_usable_choices(data):  # `choices: []` relayed as an answer: the client's SDK fails on it
            raise AttemptFailed(f"upstream {model.alias} sent no choices", status_code=502, retryable=True,
                                billed=True)
        return data

    async def open_stream(self, model: HostedModel, body: dict[str, Any]) -> UpstreamStream:
        return _LiteLLMStream(await self._call(model, body, stream=True), model)

"""HTTP schemas at the edge: the OpenAI chat-completions, completions and embeddings requests, validated strictly.

Unknown top-level fields are refused (as OpenAI does) so a typo never silently changes behaviour;
message objects allow provider extras (tool_calls, name, ...) because they are relayed, not read.
vLLM's common sampling extensions (`top_k`, `min_p`, `repetition_penalty`, sent through the SDK's
`extra_body`) are known fields: a `backend: vllm` local route applies them, the in-process one refuses them.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from local_engine import SamplingOptions
from policies import schema_problem
from policies.conditions import Role

MAX_TOKENS_LIMIT = 1_000_000
# PostgreSQL's text cannot hold a NUL character: a key name, team or key id with one was a 500 there.
NO_NUL = r"^[^\x00]*$"
MAX_CHOICES = 128  # OpenAI's limit on `n`
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ChatMessage(BaseModel):
    """One chat message; content is text, a list of parts, or null for tool-call turns."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(default=None, max_length=256)

    @field_validator("content")
    @classmethod
    def _parts(cls, value: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        # As OpenAI checks them: a part without a type, or a text part without text, would otherwise be
        # read as nothing and the model would answer an empty prompt.
        if isinstance(value, list):
            if not value:
                raise ValueError("content must be a string or a non-empty array of content parts")
            for part in value:
                if not isinstance(part.get("type"), str) or not part["type"]:
                    raise ValueError("each content part needs a `type` (text, image_url, input_audio, file, ...)")
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise ValueError("a content part of type text needs `text`, a string")
        return value

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        # Only an assistant turn (tool calls instead of text) or a legacy function result may leave content
        # out, as the OpenAI API and SDK types allow.
        if self.content is None and self.role not in ("assistant", "function"):
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        """The message's text parts joined; images and audio contribute nothing."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class ParamError(ValueError):
    """A request refused for want of another parameter: the error names `param`, as OpenAI's does."""

    def __init__(self, param: str, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code  # OpenAI's code when not invalid_value (unsupported_parameter)


class StreamOptions(BaseModel):
    """OpenAI's stream_options."""

    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool | None = False  # null: the default (the SDK's types allow it)
    include_obfuscation: bool | None = None


MAX_CACHE_TTL_S = 31_536_000  # a year, as the config's ttl_s


class CacheControl(BaseModel):
    """LiteLLM's per-request `cache` controls: `no-cache` (do not read), `no-store` (do not write), `ttl` (this entry's
    seconds), `s-maxage` (accept only an entry at most this old). Read by the gateway's cache, never relayed."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    no_cache: bool = Field(default=False, alias="no-cache")
    no_store: bool = Field(default=False, alias="no-store")
    ttl: int | float | None = Field(default=None, gt=0, le=MAX_CACHE_TTL_S, allow_inf_nan=False)
    s_maxage: int | float | None = Field(default=None, ge=0, le=MAX_CACHE_TTL_S, alias="s-maxage",
                                         allow_inf_nan=False)


class SamplingRequest(BaseModel):
    """The fields the chat and the legacy completions requests share, validated alike: a completion is served as a
    chat request, so the two must never accept different values for the same field. Strict types, as OpenAI's API:
    `"max_tokens": "5"` or `"n": true` is a 400, not silently coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    user: str | None = Field(default=None, max_length=512)
    metadata: dict[str, str] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    # vLLM's extensions, sent through extra_body; "off" is top_k -1 or 0, min_p 0, repetition_penalty 1
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    cache: CacheControl | None = None  # the gateway's response cache (LiteLLM's field): never relayed, never routed on

    @field_validator("stream", mode="before")
    @classmethod
    def _stream_null_is_false(cls, value: Any) -> Any:
        # OpenAI's API and the SDK (`stream: Optional[Literal[False]]`) take null for "not streamed".
        return False if value is None else value

    @field_validator("stop")
    @classmethod
    def _stop_limits(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > 4 or any(not s or len(s) > 256 for s in items):
            raise ValueError("stop takes at most 4 non-empty strings of at most 256 characters")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())):
            raise ValueError("metadata takes at most 16 keys of at most 64 characters with values of at most 512")
        return value

    @model_validator(mode="after")
    def _one_token_cap(self) -> Self:
        if self.stream_options is not None and not self.stream:
            raise ParamError("stream_options", "stream_options is only allowed when stream is true")
        return self

    @model_validator(mode="after")
    def _relayable(self) -> Self:
        # JSON admits lone surrogate escapes ("\ud800") and integers of any size; neither can be relayed
        # upstream, journalled or matched as text, so they are refused here rather than failing later as a 500.
        try:
            orjson.dumps(self.model_dump(exclude_none=True))
        except orjson.JSONEncodeError as exc:
            raise ValueError(f"the request holds a value that cannot be relayed as JSON: {exc}") from None
        return self


class ChatRequest(SamplingRequest):
    """POST /v1/chat/completions body."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=10_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=512)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    reasoning_effort: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    verbosity: str | None = None
    functions: list[dict[str, Any]] | None = Field(default=None, max_length=128)  # deprecated, still in the SDK
    function_call: str | dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None  # the local route refuses it: it runs no moderation

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Checked here, as OpenAI does, so that a typo is a 400 before any compute, not a 502 after a draft.
        if value is None:
            return None
        kind = value.get("type")
        if kind not in RESPONSE_FORMAT_TYPES:
            raise ValueError(f"response_format.type must be one of {', '.join(RESPONSE_FORMAT_TYPES)}, not {kind!r}")
        if kind != "json_schema":
            return value
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ValueError("response_format of type json_schema needs json_schema.name (and usually .schema)")
        if not SCHEMA_NAME.fullmatch(spec["name"]):
            raise ValueError("response_format.json_schema.name takes letters, digits, _ and - (at most 64), "
                             "as OpenAI requires")
        schema = spec.get("schema")
        if schema is not None:
            if not isinstance(schema, dict):
                raise ValueError("response_format.json_schema.schema must be a JSON Schema object")
            problem = schema_problem(schema)  # also every $ref resolved: an unresolvable one would fail each check
            if problem is not None:
                raise ValueError(f"response_format.json_schema.schema: {problem}")
        return value

    @model_validator(mode="after")
    def _tool_choice_needs_tools(self) -> ChatRequest:
        # OpenAI refuses these; served locally without tools, "required" would silently get plain text.
        if self.tools is not None and not self.tools:
            raise ParamError("tools", "tools must be a non-empty array (leave it out for no tools)")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise ParamError("tool_choice", "tool_choice is only allowed when tools are specified")
        if self.function_call is not None and self.function_call != "none" and not self.functions:
            raise ParamError("function_call", "function_call is only allowed when functions are specified")
        return self

    def token_cap(self) -> int | None:
        """The client's completion cap, whichever spelling it used."""
        return self.max_completion_tokens or self.max_tokens

    def stop_list(self) -> list[str]:
        """Stop sequences as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling_options(self) -> SamplingOptions:
        """The options only some local backends apply, neutral values (which SDKs send by default) left out:
        what the planner checks against the local backend's capabilities."""
        return SamplingOptions(
            logprobs=self.logprobs or None, top_logprobs=self.top_logprobs or None,
            frequency_penalty=self.frequency_penalty or None, presence_penalty=self.presence_penalty or None,
            logit_bias=self.logit_bias or None, top_k=self.top_k if self.top_k not in (-1, 0) else None,
            min_p=self.min_p or None,
            repetition_penalty=self.repetition_penalty if self.repetition_penalty != 1 else None)

    def wants_usage_chunk(self) -> bool:
        """True when a streaming client asked for the final usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def upstream_body(self, provider_model: str) -> dict[str, Any]:
        """The body relayed to an OpenAI-compatible upstream: the client's fields, the provider's model."""
        # metadata steers draftgate's own rules; OpenAI refuses it without `store`, so it stays here.
        body = self.model_dump(exclude_none=True, exclude={"metadata", "cache"})
        body["model"] = provider_model
        if self.stream:
            # Always ask for usage so the ledger has real token counts; the relay drops the
            # usage chunk again when the client did not ask for it.
            body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
        return body


DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's (and vLLM's) max_tokens for /v1/completions when left out
SERVED_AS_CHAT = "draftgate serves /v1/completions as a chat request (the prompt as one user message)"


def _unsupported(param: str, what: str) -> ParamError:
    return ParamError(param, f"{what} is not supported: {SERVED_AS_CHAT}", code="unsupported_parameter")


class CompletionRequest(SamplingRequest):
    """POST /v1/completions body (OpenAI's legacy text completions), served as a chat request, as LiteLLM's
    text_completion serves chat models: what a chat request cannot express (several prompts, token ids, `suffix`,
    `echo`, `best_of`) is a 400 naming the parameter, never silently dropped."""

    prompt: str
    suffix: str | None = None
    echo: bool | None = None
    best_of: int | None = Field(default=None, ge=1, le=20)
    logprobs: int | None = Field(default=None, ge=0, le=20)  # served as chat's logprobs + top_logprobs

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_text_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            return value[0]  # the SDK's `prompt=["..."]`
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            raise _unsupported("prompt", f"a list of {len(value)} prompts (send one request per prompt)")
        if _token_ids(value) or (isinstance(value, list) and value and all(_token_ids(v) for v in value)):
            raise _unsupported("prompt", "a prompt of token ids (send its text)")
        if not isinstance(value, str):
            raise ValueError("prompt must be a string, or an array of one string")
        return value

    @model_validator(mode="after")
    def _served_as_chat(self) -> CompletionRequest:
        if self.suffix:
            raise _unsupported("suffix", "suffix (insertion)")
        if self.echo:
            raise _unsupported("echo", "echo: true")
        if self.best_of is not None and self.best_of > 1:
            raise _unsupported("best_of", "best_of above 1 (use n)")
        if self.best_of is not None and self.n is not None and self.n > self.best_of:
            raise ParamError("best_of", "best_of must be at least n")
        return self

    def to_chat(self) -> ChatRequest:
        """The chat request this completion is served as: the prompt as one user message, max_tokens 16 when left
        out, as OpenAI's completions default it; `logprobs: k` as chat's logprobs with k top_logprobs."""
        shared = {name: getattr(self, name) for name in SamplingRequest.model_fields}
        fields = {name: value for name, value in shared.items() if value is not None}
        fields["max_tokens"] = self.max_tokens or DEFAULT_COMPLETION_TOKENS
        if self.logprobs is not None:
            fields |= {"logprobs": True, "top_logprobs": self.logprobs}
        return ChatRequest(messages=[ChatMessage(role="user", content=self.prompt)], **fields)


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on `input` items per request
EMBEDDING_INPUT = "input must be a non-empty string, or a non-empty array of non-empty strings, of token ids, or " \
                  "of non-empty token-id arrays"


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings body, as OpenAI validates it: strict types, unknown fields refused as for chat."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=512)

    @field_validator("input", mode="before")
    @classmethod
    def _input_shape(cls, value: Any) -> Any:
        # One clear message instead of pydantic's four union members' errors; an empty string is refused as
        # OpenAI refuses it (an upstream would answer it with a 400 anyway, after a round trip).
        if isinstance(value, str):
            if not value:
                raise ValueError(EMBEDDING_INPUT)
            return value
        if not isinstance(value, list) or not value:
            raise ValueError(EMBEDDING_INPUT)
        if len(value) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"input takes at most {MAX_EMBEDDING_INPUTS} items, not {len(value)}")
        if not (all(isinstance(v, str) and v for v in value) or _token_ids(value)
                or all(_token_ids(v) for v in value)):
            raise ValueError(EMBEDDING_INPUT)
        return value

    @model_validator(mode="after")
    def _relayable(self) -> EmbeddingRequest:
        try:  # lone surrogates and integers past 64 bits cannot be relayed: a 400 here, not a 500 later
            orjson.dumps(self.model_dump(exclude_none=True))
        except orjson.JSONEncodeError as exc:
            raise ValueError(f"the request holds a value that cannot be relayed as JSON: {exc}") from None
        return self

    def upstream_body(self) -> dict[str, Any]:
        """The body relayed upstream (its `model` replaced by the provider's name at the transport)."""
        return self.model_dump(exclude_none=True)

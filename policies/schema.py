"""The draftgate.yaml schema. Every model forbids unknown keys so typos are errors, not silence."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from policies.conditions import When
from policies.numbers import Count, Number
from policies.source import Origin
from policies.verifier_options import (
    JsonOptions,
    JsonSchemaOptions,
    JudgeOptions,
    MinConfidenceOptions,
    PythonTestsOptions,
    RegexOptions,
)

Strict = ConfigDict(extra="forbid", frozen=True)
ORIGIN = re.compile(r"https?://[^/\s:]+(:\d{1,5})?")


def _an_origin(origin: str) -> str:
    """A browser sends `Origin: scheme://host[:port]`, never a path or a trailing slash: one written with them would
    match no request, silently."""
    if origin != "*" and not ORIGIN.fullmatch(origin):
        raise ValueError(f"{origin!r} is not an origin: write '*' or scheme://host[:port] (no path, no trailing "
                         "slash), e.g. https://app.example.com")
    return origin


CorsOrigin = Annotated[str, AfterValidator(_an_origin)]


def check_base_url(url: str, meaning: str, *, adds_endpoint: bool = True) -> None:
    """Checked at load, not on the first request: a URL without a scheme, or the endpoint's URL where the gateway
    adds the endpoint, would fail every request (a 502 or 503, or the server's 404) while check-config said OK."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or url != url.strip():
        raise ValueError(f"{url!r} is not an http(s) URL: api_base is {meaning}")
    if adds_endpoint and parts.path.rstrip("/").endswith("/chat/completions"):
        raise ValueError(f"{url!r} is an endpoint: api_base is {meaning} (the gateway adds /chat/completions)")


def check_secret_text(value: str | None) -> str | None:
    """A key sent in a header never has whitespace around it: one read from a secret file with its newline
    (`os.environ/KEY`) would match no request, or be refused upstream. Refused here, without echoing it."""
    if value is not None and value != value.strip():
        raise ValueError("starts or ends with whitespace (a secret file's trailing newline?), which no "
                         "Authorization header carries")
    return value


class PriceConfig(BaseModel):
    model_config = Strict
    input_per_mtok: Number = Field(ge=0)
    output_per_mtok: Number = Field(ge=0)
    cached_input_per_mtok: Number | None = Field(default=None, ge=0)  # prompt-cache reads; default: input price
    cache_write_input_per_mtok: Number | None = Field(default=None, ge=0)  # prompt-cache writes; default: input price


AUTO_ALIAS = "auto"  # the alias that lets the policy choose


class ModelConfig(BaseModel):
    """One hosted alias."""

    model_config = Strict
    name: str = Field(min_length=1, max_length=256)
    model: str = Field(min_length=1, max_length=256, description="LiteLLM model string, provider/model")
    api_base: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    price: PriceConfig | None = None
    fallbacks: list[str] = Field(default_factory=list)
    timeout_s: Number = Field(default=60.0, gt=0, le=3600)
    max_retries: Count = Field(default=2, ge=0, le=10)
    allowed_fails: Count = Field(default=3, ge=1, le=1000)  # failed requests in a row before a cooldown (LiteLLM's)
    cooldown_time: Number = Field(default=5.0, ge=0, le=3600)  # seconds the alias is skipped then; 0: never

    _api_key = field_validator("api_key")(check_secret_text)

    @field_validator("api_base")
    @classmethod
    def _base_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:  # `openai/` goes over the gateway's own client, which adds the endpoint
            check_base_url(value, "the provider's base URL, e.g. https://api.openai.com/v1",
                           adds_endpoint=str(info.data.get("model", "")).startswith("openai/"))
        return value


class LocalConfig(BaseModel):
    """The in-process engine (or a vLLM pool) serving the local alias."""

    model_config = Strict
    enabled: bool = True
    alias: str = Field(default="local/diffusiongemma", min_length=1, max_length=256)  # as a models[] name
    backend: Literal["transformers", "vllm"] = "transformers"
    model: str | None = None
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    threads: Count | None = Field(default=None, ge=1, le=256)
    max_batch_size: Count = Field(default=8, ge=1, le=512)
    max_queue: Count = Field(default=64, ge=1, le=100_000)
    device_usd_per_hour: Number | None = Field(default=None, ge=0)
    api_base: str | list[str] | None = None  # backend vllm: one server's /v1 URL, or a pool of them
    api_key: str | None = Field(default=None, repr=False)  # backend vllm: the servers' --api-key (a Bearer token)
    max_tokens: Count = Field(default=512, ge=1, le=65_536)
    prefix_cache_tokens: Count = Field(default=32_768, ge=0, le=10_000_000)
    prefix_cache_min_tokens: Count = Field(default=64, ge=1, le=1_000_000)
    first_canvas_length: Count | None = Field(default=None, ge=1, le=65_536)
    max_model_len: Count | None = Field(default=None, ge=2, le=10_000_000)  # context window (prompt + answer)
    timeout_s: Number = Field(default=120.0, gt=0, le=3600)  # backend vllm: silence from a server before failover

    _api_key = field_validator("api_key")(check_secret_text)

    @field_validator("api_base")
    @classmethod
    def _server_urls(cls, value: str | list[str] | None) -> str | list[str] | None:
        for url in [value] if isinstance(value, str) else value or []:
            check_base_url(url, "the vLLM server's /v1 URL, e.g. http://127.0.0.1:8000/v1")
        return value

    @model_validator(mode="after")
    def _vllm_needs_a_server(self) -> LocalConfig:
        if self.backend == "vllm" and not self.api_bases:
            raise ValueError("backend vllm needs api_base (the vLLM server's /v1 URL, or a list of them)")
        if isinstance(self.api_base, list) and (len(self.api_base) > 64 or len(
                {url.rstrip("/") for url in self.api_base}) < len(self.api_base)):  # `/v1/` is `/v1`
            raise ValueError("api_base takes at most 64 distinct, non-empty server URLs")
        return self

    @property
    def api_bases(self) -> tuple[str, ...]:
        """The vLLM servers, however `api_base` was written."""
        return (self.api_base,) if isinstance(self.api_base, str) else tuple(self.api_base or ())


class LimitsConfig(BaseModel):
    """Budgets and rate limits (LiteLLM's names); enforced atomically in the ledger database."""

    model_config = Strict
    max_budget_usd: Number | None = Field(default=None, ge=0)
    budget_period: Literal["hour", "day", "week", "month", "total"] = "month"
    rpm_limit: Count | None = Field(default=None, ge=1)
    tpm_limit: Count | None = Field(default=None, ge=1)


class TeamConfig(LimitsConfig):
    name: str = Field(min_length=1, max_length=128)


class KeyConfig(LimitsConfig):
    name: str = Field(min_length=1, max_length=57)  # the ledger's key id is "config:<name>", at most 64 characters
    key: str = Field(min_length=8, repr=False)
    team: str | None = None
    models: list[str] | None = Field(default=None, min_length=1, max_length=1000)  # None: every alias

    _key = field_validator("key")(check_secret_text)


class VerifierSpec(BaseModel):
    """Exactly one verifier kind with its options, e.g. `{json_schema: {from_request: true}}`."""

    model_config = Strict
    json_: JsonOptions | None = Field(default=None, alias="json")
    json_schema: JsonSchemaOptions | None = None
    regex: RegexOptions | None = None
    min_confidence: MinConfidenceOptions | None = None
    python_tests: PythonTestsOptions | None = None
    judge: JudgeOptions | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VerifierSpec:
        if len(self.items()) != 1:
            raise ValueError("each verifier is a mapping with exactly one kind: json, json_schema, regex, "
                             "min_confidence, python_tests or judge")
        return self

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        """(kind, options as the verifier's keyword arguments) of each kind given."""
        names = ("json", "json_schema", "regex", "min_confidence", "python_tests", "judge")
        values = (self.json_, self.json_schema, self.regex, self.min_confidence, self.python_tests, self.judge)
        return [(n, v.model_dump(by_alias=True)) for n, v in zip(names, values, strict=True) if v is not None]

    @property
    def kind(self) -> str:
        return self.items()[0][0]

    @property
    def options(self) -> dict[str, Any]:
        return self.items()[0][1]


class LocalAction(BaseModel):
    model_config = Strict
    kind: Literal["local"] = "local"
    max_local_tokens: Count | None = Field(default=None, ge=1, le=65_536)


class HostedAction(BaseModel):
    model_config = Strict
    kind: Literal["hosted"] = "hosted"
    alias: str


class RequestedAction(BaseModel):
    model_config = Strict
    kind: Literal["requested"] = "requested"


class CascadeAction(BaseModel):
    """Draft locally, verify, escalate to `escalate_to` when a verifier fails."""

    model_config = Strict
    kind: Literal["cascade"] = "cascade"
    escalate_to: str
    mode: Literal["regenerate", "refine"] = "regenerate"
    max_local_tokens: Count | None = Field(default=None, ge=1, le=65_536)
    on_hosted_unavailable: Literal["serve_draft", "error"] = "error"
    verifiers: list[VerifierSpec] = Field(default_factory=list)


Action = Annotated[LocalAction | HostedAction | RequestedAction | CascadeAction, Field(discriminator="kind")]


ACTION_FORMS = ("an action is one of: requested, local, {local: {max_local_tokens: N}}, {hosted: ALIAS}, "
                "{cascade: {escalate_to: ALIAS, ...}}")


def _normalize_action(value: Any) -> Any:
    """`local` / `{hosted: alias}` / `{cascade: {...}}` / `{local: {...}}` → a tagged dict. Any other shape
    is refused here with the forms allowed: pydantic's own message would be about its discriminator."""
    if isinstance(value, BaseModel) or (isinstance(value, dict) and "kind" in value):
        return value  # already tagged (built in code, or a dumped config read back)
    if isinstance(value, str) and value in ("local", "requested"):
        return {"kind": value}
    if isinstance(value, dict) and len(value) == 1:
        (kind, options), = value.items()
        if kind == "hosted" and isinstance(options, str):
            return {"kind": "hosted", "alias": options}
        if kind in ("local", "cascade", "hosted") and isinstance(options, dict):
            if "kind" in options:  # it replaced the tag: `{local: {kind: hosted, alias: a}}` ran a hosted action
                raise ValueError(f"`kind` is not an option of {kind}: the key {kind} itself names the action")
            return {"kind": kind, **options}
        if kind == "local" and options is None:
            return {"kind": "local"}
    if isinstance(value, dict) and len(value) > 1 and set(value) <= {"local", "hosted", "cascade", "requested"}:
        raise ValueError(f"{ACTION_FORMS}; give only one of {', '.join(map(str, value))}")
    raise ValueError(ACTION_FORMS)


class Rule(BaseModel):
    model_config = Strict
    name: str = Field(min_length=1, max_length=128)
    when: When = Field(default_factory=When)
    action: Action

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, value: Any) -> Any:
        return _normalize_action(value)

    @field_validator("when", mode="before")
    @classmethod
    def _empty_when(cls, value: Any) -> Any:
        """`when:` with nothing after it is an empty `when`: it matches every request, as `when: {}` does."""
        return {} if value is None else value


class CacheConfig(BaseModel):
    """The exact-match response cache (LiteLLM's `cache: true`, Portkey's simple cache): off unless enabled, since
    serving a stored answer again is a choice an operator makes, not a default."""

    model_config = Strict
    enabled: bool = False
    ttl_s: Count = Field(default=3600, ge=1, le=31_536_000)  # an entry's life unless the request sets `cache.ttl`
    max_entries: Count = Field(default=100_000, ge=1, le=100_000_000)  # beyond it the oldest entries are evicted


class PoliciesConfig(BaseModel):
    model_config = Strict
    default: Action = Field(default_factory=RequestedAction)
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("default", mode="before")
    @classmethod
    def _default(cls, value: Any) -> Any:
        return _normalize_action(value)


class GatewayConfig(BaseModel):
    """The whole draftgate.yaml."""

    model_config = Strict
    master_key: str | None = Field(default=None, min_length=8, repr=False)  # "" would be open mode, as a key's 8
    database_url: str | None = None
    reference_model: str | None = None
    models: list[ModelConfig] = Field(default_factory=list)
    local: LocalConfig = Field(default_factory=LocalConfig)
    teams: list[TeamConfig] = Field(default_factory=list)
    keys: list[KeyConfig] = Field(default_factory=list)
    policies: PoliciesConfig = Field(default_factory=PoliciesConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    # Browser apps (the OpenAI JS SDK's dangerouslyAllowBrowser) need CORS; vLLM's and LiteLLM's servers allow every
    # origin by default, so this does too. Credentials (the dashboard's cookie) are never allowed cross-origin.
    cors_allow_origins: list[CorsOrigin] = Field(default_factory=lambda: ["*"], max_length=256)
    _origin: Origin = PrivateAttr(default_factory=lambda: Origin("config", {}))  # built in code: no lines

    @property
    def origin(self) -> Origin:
        """The file and lines it was loaded from, for warnings found later."""
        return self._origin

    def set_origin(self, origin: Origin) -> None:
        """Called once by the loader; the origin is not a setting (it takes no part in equality)."""
        self._origin = origin

    _master_key = field_validator("master_key")(check_secret_text)

    @field_validator("database_url")
    @classmethod
    def _a_url(cls, value: str | None) -> str | None:
        """Parsed here so a typo is a config error; whether its driver is installed is checked at startup."""
        if value is not None:
            try:
                make_url(value)
            except (ArgumentError, ValueError) as exc:
                raise ValueError(f"not a database URL (dialect://user:password@host/db): {exc}") from None
        return value

    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def requestable_aliases(self) -> list[str]:
        """Every alias a client may send as `model`: `auto`, the local one when it is on, the hosted ones."""
        return [AUTO_ALIAS, *([self.local.alias] if self.local.enabled else []), *self.model_names()]

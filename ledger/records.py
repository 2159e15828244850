"""The value recorded for each request: one immutable row."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import orjson


@dataclass(frozen=True)
class RequestRecord:
    """One client request and everything it cost. Money in USD; None means unknown, never $0."""

    request_id: str
    created_at: datetime
    finished_at: datetime
    key_id: str | None
    team: str | None
    model_alias: str
    route: str  # "local" | "hosted" | "escalated" | "cache" | "none"
    provider_model: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    status: str  # "ok" | "error" | "cancelled"
    status_code: int
    hosted_cost_usd: float | None = None
    local_cost_usd: float | None = None
    device_seconds: float = 0.0
    wasted_draft_usd: float = 0.0
    reference_cost_usd: float | None = None
    unpriced: bool = False
    stream: bool = False
    attempts: int = 1
    rule: str | None = None
    end_user: str | None = None  # the request's `user`: the client's own end user, as OpenAI's API names it
    error: str | None = None
    escalation_reason: str | None = None
    detail: dict[str, Any] | None = None

    @property
    def cost_usd(self) -> float | None:
        """Hosted + local + wasted drafts; None while any part is unpriced."""
        if self.unpriced:
            return None
        return (self.hosted_cost_usd or 0.0) + (self.local_cost_usd or 0.0) + self.wasted_draft_usd

    def to_json(self) -> bytes:
        """One journal line's JSON, timestamps as ISO 8601.

        orjson serialises the dataclass natively: ~1 µs against ~70 µs for `asdict` (which deep-copies
        `detail`) plus a dump, on every request's path.
        """
        return orjson.dumps(self)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> RequestRecord:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["created_at"] = datetime.fromisoformat(values["created_at"])
        values["finished_at"] = datetime.fromisoformat(values["finished_at"])
        return cls(**values)

"""The value recorded for each request: one immutable row."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class RequestRecord:
    """One client request and everything it cost. Money in USD; None means unknown, never $0."""

    request_id: str
    created_at: datetime
    finished_at: datetime
    key_id: str | None
    team: str | None
    model_alias: str
    route: str  # "local" | "hosted" | "escalated"
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
    error: str | None = None
    escalation_reason: str | None = None
    detail: dict[str, Any] | None = None

    @property
    def cost_usd(self) -> float | None:
        """Hosted + local + wasted drafts; None while any part is unpriced."""
        if self.unpriced:
            return None
        return (self.hosted_cost_usd or 0.0) + (self.local_cost_usd or 0.0) + self.wasted_draft_usd

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO strings) for the journal."""
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat()
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> RequestRecord:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["created_at"] = datetime.fromisoformat(values["created_at"])
        values["finished_at"] = datetime.fromisoformat(values["finished_at"])
        return cls(**values)

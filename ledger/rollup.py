"""Daily roll-up of the ledger: what keeps grouped reports fast on millions of rows.

Each inserted request adds itself to one `usage_daily` row (day x team x key x requested alias x
model that answered x route x escalation kind x routing rule), and to one `usage_daily_user` row (day x team x
key x route x end user), in the same transaction as the request row, with an atomic `count = count + n`
upsert, so replicas sharing a database never lose an update and a replayed row (already stored) is never
counted twice. Latency is kept as a log-spaced histogram (buckets 20% wide, so a p50/p99 read
from it is within about 10% of the exact value), the way Prometheus keeps latency.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC
from typing import Any

from ledger.records import RequestRecord

LATENCY_BUCKETS = 72
LATENCY_BASE_MS = 0.5
LATENCY_RATIO = 1.2
GROUP_COLUMNS = ("day", "team", "key_id", "model_alias", "provider_model", "route", "reason", "rule")
# The end users' roll-up (`usage_daily_user`), apart from the main one: an app that names its users may have
# thousands a day, and in the main key they would multiply its rows for every other report. It keeps the sums but
# no latency histogram: where each user sends a request or two a day it has a row per request, and 72 buckets on
# each made a report by user read ~7x more than the raw rows (bench/results/reports_users.json).
USER_GROUP_COLUMNS = ("day", "team", "key_id", "route", "end_user")
END_USER_KEY_CHARS = 256  # of a request's `user` (up to 512 characters) in that roll-up's key


def latency_bucket(latency_ms: float) -> int:
    """Bucket i holds latencies in [BASE * RATIO**(i-1), BASE * RATIO**i); the last one is open-ended."""
    if latency_ms <= LATENCY_BASE_MS:
        return 0
    index = math.ceil(math.log(latency_ms / LATENCY_BASE_MS, LATENCY_RATIO))
    return min(LATENCY_BUCKETS - 1, max(0, index))


def bucket_value_ms(index: int) -> float:
    """A bucket's representative latency: the geometric middle of its bounds."""
    if index == 0:
        return LATENCY_BASE_MS
    return float(LATENCY_BASE_MS * LATENCY_RATIO ** (index - 0.5))


def quantile_ms(histogram: Sequence[int], q: float) -> float | None:
    """The q-quantile read off a histogram, or None when it is empty."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return bucket_value_ms(index)
    return bucket_value_ms(len(histogram) - 1)


def reason_kind(reason: str | None) -> str:
    """A short, groupable kind for an escalation reason ("json_schema+regex", "hosted unavailable")."""
    if not reason:
        return ""
    if reason.startswith("hosted unavailable"):
        return "hosted unavailable"
    kinds = sorted({part.split(":", 1)[0].strip() for part in reason.split("; ") if part.strip()})
    return "+".join(kinds)[:64]


def is_unreferenced(record: RequestRecord) -> bool:
    """A served, priced row whose all-hosted counterfactual is unknown (no `reference_model`): its dollars are
    real spend, but it has nothing to be compared with, so it stays out of the savings."""
    return not record.unpriced and record.reference_cost_usd is None and record.status == "ok"


@dataclass
class UsageTotals:
    """Sums over a set of requests: dollars over priced rows (an unpriced one is counted, never summed as $0);
    `unreferenced_usd` is the part of them without an all-hosted counterfactual (see `is_unreferenced`)."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    device_seconds: float = 0.0
    local_usd: float = 0.0
    hosted_usd: float = 0.0
    wasted_usd: float = 0.0
    reference_usd: float = 0.0
    unpriced: int = 0
    unreferenced: int = 0
    unreferenced_usd: float = 0.0
    latency_ms_sum: float = 0.0
    latency: list[int] = field(default_factory=lambda: [0] * LATENCY_BUCKETS)

    def add(self, record: RequestRecord) -> None:
        self.requests += 1
        self.errors += record.status != "ok"
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens
        self.device_seconds += record.device_seconds
        self.latency_ms_sum += record.latency_ms
        self.latency[latency_bucket(record.latency_ms)] += 1
        if record.unpriced:
            self.unpriced += 1
            return
        self.local_usd += record.local_cost_usd or 0.0
        self.hosted_usd += record.hosted_cost_usd or 0.0
        self.wasted_usd += record.wasted_draft_usd
        if is_unreferenced(record):
            self.unreferenced += 1
            self.unreferenced_usd += (record.local_cost_usd or 0.0) + (record.hosted_cost_usd or 0.0) \
                + record.wasted_draft_usd
        else:
            self.reference_usd += record.reference_cost_usd or 0.0

    def merge(self, other: UsageTotals) -> None:
        # Spelt out, not a loop over SCALAR_FIELDS: a report by user merges tens of thousands of totals.
        self.requests += other.requests
        self.errors += other.errors
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.device_seconds += other.device_seconds
        self.local_usd += other.local_usd
        self.hosted_usd += other.hosted_usd
        self.wasted_usd += other.wasted_usd
        self.reference_usd += other.reference_usd
        self.unpriced += other.unpriced
        self.unreferenced += other.unreferenced
        self.unreferenced_usd += other.unreferenced_usd
        self.latency_ms_sum += other.latency_ms_sum
        if any(other.latency):  # totals from the end users' roll-up have none: a report by user merges thousands
            self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]

    def as_columns(self, *, latency: bool = True) -> dict[str, Any]:
        """A roll-up row's sums (`latency`: and its histogram, which the end users' roll-up does not keep)."""
        columns: dict[str, Any] = {name: getattr(self, name) for name in SCALAR_FIELDS}
        if latency:
            columns.update({latency_column(i): n for i, n in enumerate(self.latency)})
        return columns

    @classmethod
    def from_columns(cls, row: Any, *, latency: bool = True) -> UsageTotals:
        """A roll-up row's totals (`latency`: with its histogram; without, the histogram stays empty)."""
        # PostgreSQL sums BIGINT columns into NUMERIC (Decimal): bring every value back to int/float.
        totals = cls(**{name: INT_OR_FLOAT[name](row[name] or 0) for name in SCALAR_FIELDS})  # type: ignore[arg-type]
        if latency:
            totals.latency = [int(row[latency_column(i)] or 0) for i in range(LATENCY_BUCKETS)]
        return totals


SCALAR_FIELDS = tuple(f.name for f in fields(UsageTotals) if f.name != "latency")
assert SCALAR_FIELDS == ("requests", "errors", "prompt_tokens", "completion_tokens", "device_seconds", "local_usd",
                         "hosted_usd", "wasted_usd", "reference_usd", "unpriced", "unreferenced", "unreferenced_usd",
                         "latency_ms_sum"), "UsageTotals.merge spells out every field: add a new one there too"
INT_OR_FLOAT = {f.name: int if f.type in ("int", int) else float for f in fields(UsageTotals)}


def latency_column(index: int) -> str:
    return f"lat_{index:02d}"


def group_key(record: RequestRecord) -> tuple[str, ...]:
    """The roll-up row a request belongs to (None becomes '' so the key can be unique)."""
    return (record.created_at.astimezone(UTC).date().isoformat(), record.team or "", record.key_id or "", record.model_alias,
            record.provider_model or "", record.route, reason_kind(record.escalation_reason), record.rule or "")


def user_group_key(record: RequestRecord) -> tuple[str, ...]:
    """The end users' roll-up row a request belongs to."""
    return (record.created_at.astimezone(UTC).date().isoformat(), record.team or "", record.key_id or "",
            record.route, (record.end_user or "")[:END_USER_KEY_CHARS])


def aggregate(records: Iterable[RequestRecord] | Iterable[Any],
              key: Callable[[Any], tuple[str, ...]] = group_key) -> dict[tuple[str, ...], UsageTotals]:
    """Roll-up groups (by `key`: the main roll-up's, or `user_group_key`) of records, or of database rows with
    the same attribute names."""
    groups: dict[tuple[str, ...], UsageTotals] = {}
    for record in records:
        groups.setdefault(key(record), UsageTotals()).add(record)
    return groups

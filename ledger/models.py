"""SQLAlchemy 2 tables. Schema changes go through alembic migrations in ledger/migrations."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ledger.rollup import (
    END_USER_KEY_CHARS,
    GROUP_COLUMNS,
    LATENCY_BUCKETS,
    USER_GROUP_COLUMNS,
    latency_column,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC, returns tz-aware UTC on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def live_name_index() -> Index:
    """No two unrevoked keys share a name (`key:` rules match by name): migration 0006 creates it, so two
    `keys create` racing past the gateway's own check cannot both succeed."""
    live = text("revoked_at IS NULL")
    return Index("uq_api_keys_live_name", "name", unique=True, sqlite_where=live, postgresql_where=live)


class Base(DeclarativeBase):
    pass


class RequestRow(Base):
    __tablename__ = "requests"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    key_id: Mapped[str | None] = mapped_column(String(64))
    team: Mapped[str | None] = mapped_column(String(128))
    model_alias: Mapped[str] = mapped_column(String(256), nullable=False)
    route: Mapped[str] = mapped_column(String(16), nullable=False)
    provider_model: Mapped[str | None] = mapped_column(String(256))
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    latency_ms: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    status_code: Mapped[int] = mapped_column(Integer, nullable=False)
    hosted_cost_usd: Mapped[float | None] = mapped_column(Float)
    local_cost_usd: Mapped[float | None] = mapped_column(Float)
    device_seconds: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    wasted_draft_usd: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    reference_cost_usd: Mapped[float | None] = mapped_column(Float)
    unpriced: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    stream: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    rule: Mapped[str | None] = mapped_column(String(256))
    end_user: Mapped[str | None] = mapped_column(String(512))  # the request's `user` (0008)
    error: Mapped[str | None] = mapped_column(Text)
    escalation_reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_requests_created_at", "created_at"),
        Index("ix_requests_team_created_at", "team", "created_at"),
        Index("ix_requests_key_created_at", "key_id", "created_at"),
        Index("ix_requests_model_alias", "model_alias"),
    )


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    team: Mapped[str | None] = mapped_column(String(128))
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    max_budget_usd: Mapped[float | None] = mapped_column(Float)
    budget_period: Mapped[str | None] = mapped_column(String(16))
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    models: Mapped[list[str] | None] = mapped_column(JSON)  # aliases the key may request; None: every one
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (live_name_index(),)


class TeamRow(Base):
    __tablename__ = "teams"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


def unreferenced_columns() -> list[Column[Any]]:
    """Priced requests without an all-hosted counterfactual (migration 0004 adds them to older databases)."""
    return [Column("unreferenced", BigInteger, nullable=False, server_default="0"),
            Column("unreferenced_usd", Float, nullable=False, server_default="0")]


def provider_model_column() -> Column[Any]:
    """The model that answered ('' when none did): migration 0005 adds it to the roll-up's key."""
    return Column("provider_model", String(256), nullable=False, server_default="")


def rule_column() -> Column[Any]:
    """The policy rule that routed the request ('' when none did: the default route): migration 0007 adds it to
    the roll-up's key. As long as the requests table's column, whose values are cut to fit it."""
    return Column("rule", String(256), nullable=False, server_default="")


def usage_daily_columns(*, without: Collection[str] = ()) -> list[Column[Any]]:
    """The roll-up's columns; the migrations that create an older shape of it leave out the keys added after it
    (`without`: 0002 has neither `provider_model` nor `rule`, 0005 no `rule`)."""
    keys = [Column("day", String(10), nullable=False), Column("team", String(128), nullable=False),
            Column("key_id", String(64), nullable=False), Column("model_alias", String(256), nullable=False),
            provider_model_column(), Column("route", String(16), nullable=False),
            Column("reason", String(64), nullable=False), rule_column()]
    assert tuple(c.name for c in keys) == GROUP_COLUMNS
    keys = [c for c in keys if c.name not in without]
    return keys + _usage_sums()


def _usage_sums(*, latency: bool = True) -> list[Column[Any]]:
    """What a roll-up row adds up: the counts, tokens, dollars and (`latency`) the latency histogram."""
    sums = [Column("requests", BigInteger, nullable=False), Column("errors", BigInteger, nullable=False),
            Column("prompt_tokens", BigInteger, nullable=False), Column("completion_tokens", BigInteger, nullable=False),
            Column("device_seconds", Float, nullable=False), Column("local_usd", Float, nullable=False),
            Column("hosted_usd", Float, nullable=False), Column("wasted_usd", Float, nullable=False),
            Column("reference_usd", Float, nullable=False), Column("unpriced", BigInteger, nullable=False),
            Column("latency_ms_sum", Float, nullable=False), *unreferenced_columns()]
    histogram = [Column(latency_column(i), BigInteger, nullable=False, default=0) for i in range(LATENCY_BUCKETS)]
    return sums + histogram if latency else sums


usage_daily = Table("usage_daily", Base.metadata, *usage_daily_columns(),
                    PrimaryKeyConstraint(*GROUP_COLUMNS, name="pk_usage_daily"),
                    Index("ix_usage_daily_team_day", "team", "day"))


def usage_daily_user_columns() -> list[Column[Any]]:
    """The end users' roll-up (migration 0008), without a latency histogram: `end_user` is the request's `user`
    ('' when it named none), cut to END_USER_KEY_CHARS, half the requests table's column: the value is the client's,
    and the whole key must stay within an index entry's bound on PostgreSQL (~2.7 kB) whatever characters it holds."""
    keys = [Column("day", String(10), nullable=False), Column("team", String(128), nullable=False),
            Column("key_id", String(64), nullable=False), Column("route", String(16), nullable=False),
            Column("end_user", String(END_USER_KEY_CHARS), nullable=False)]
    assert tuple(c.name for c in keys) == USER_GROUP_COLUMNS
    return keys + _usage_sums(latency=False)


usage_daily_user = Table("usage_daily_user", Base.metadata, *usage_daily_user_columns(),
                         PrimaryKeyConstraint(*USER_GROUP_COLUMNS, name="pk_usage_daily_user"),
                         Index("ix_usage_daily_user_team_day", "team", "day"))


class ResponseCacheRow(Base):
    """One stored answer of the exact-match response cache (migration 0009): shared by every replica."""

    __tablename__ = "response_cache"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of scope + the request's canonical JSON
    scope: Mapped[str] = mapped_column(String(200), nullable=False)  # "team:...", "key:...", "master", "open"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    request_id: Mapped[str] = mapped_column(String(64), nullable=False)  # the request whose answer it is
    route: Mapped[str] = mapped_column(String(16), nullable=False)  # how that request was served
    provider_model: Mapped[str | None] = mapped_column(String(256))
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    reference_cost_usd: Mapped[float | None] = mapped_column(Float)  # what the request costs all-hosted
    body: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)  # the chat.completion object

    __table_args__ = (
        Index("ix_response_cache_expires_at", "expires_at"),
        Index("ix_response_cache_created_at", "created_at"),
    )


class BudgetUsageRow(Base):
    """Spend and in-flight reservations per scope (key:... / team:...), metric and window."""

    __tablename__ = "budget_usage"

    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    metric: Mapped[str] = mapped_column(String(8), primary_key=True)  # usd | requests | tokens
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # epoch seconds
    used: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    reserved: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)

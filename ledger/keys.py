"""Virtual keys: only a SHA-256 hash and a short display prefix are stored."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Select, Table, select, update
from sqlalchemy.exc import IntegrityError

from ledger.budgets import Limits
from ledger.db import Database, answered
from ledger.errors import KeyNameTakenError, PeriodWithoutBudgetError, UnknownKeyError
from ledger.models import ApiKeyRow

KEY_PREFIX = "sk-dg-"
UPDATABLE = frozenset({"max_budget_usd", "budget_period", "rpm_limit", "tpm_limit", "models", "expires_at"})
DURATION_PATTERN = r"^[1-9][0-9]{0,6}[smhd]$"
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = timedelta(days=36_500)  # beyond it the expiry date would leave what datetimes can hold


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `45m`, `90s` (LiteLLM's key `duration`); ValueError otherwise."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"not a duration like 30d, 12h, 45m or 90s: {text!r}")
    length = timedelta(seconds=int(text[:-1]) * _UNIT_S[text[-1]])
    if length > MAX_DURATION:
        raise ValueError(f"a key's duration is at most {MAX_DURATION.days} days: {text!r}")
    return length


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed: never the secret itself."""

    key_id: str
    name: str
    team: str | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    limits: Limits = field(default_factory=Limits)
    models: tuple[str, ...] | None = None  # the aliases it may request; None: every one
    expires_at: datetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))


def hash_key(raw_key: str) -> str:
    # Keys are 192-bit random strings, so a fast hash is enough (no password stretching needed).
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def _info(row: ApiKeyRow) -> KeyInfo:
    limits = Limits(row.max_budget_usd, row.budget_period or "month", row.rpm_limit,  # type: ignore[arg-type]
                    row.tpm_limit)
    return KeyInfo(row.key_id, row.name, row.team, row.prefix, row.created_at, row.revoked_at, limits,
                   tuple(row.models) if row.models is not None else None, row.expires_at)


class KeyStore:
    """Creates, verifies, lists and revokes virtual keys in the ledger database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @answered
    def create(self, name: str, team: str | None, limits: Limits | None = None, *,
               models: Sequence[str] | None = None, expires_at: datetime | None = None) -> tuple[str, KeyInfo]:
        """Returns the raw key (shown once) and its stored description; KeyNameTakenError when an unrevoked key
        already has the name (the database's unique index decides, so concurrent creates cannot both win)."""
        raw = KEY_PREFIX + secrets.token_urlsafe(24)
        limits = limits or Limits()
        values = dict(key_id="key_" + secrets.token_hex(8), name=name, team=team, key_hash=hash_key(raw),
                      prefix=raw[: len(KEY_PREFIX) + 4], created_at=datetime.now(UTC), revoked_at=None,
                      max_budget_usd=limits.max_budget_usd, budget_period=limits.budget_period,
                      rpm_limit=limits.rpm_limit, tpm_limit=limits.tpm_limit,
                      models=list(models) if models is not None else None, expires_at=expires_at)
        table = cast(Table, ApiKeyRow.__table__)
        try:
            with self._db.engine.begin() as connection:
                connection.execute(table.insert().values(**values))
        except IntegrityError:
            # The id and hash are random: what clashes is the name (two creates racing past the callers' check).
            clash = self._rows(select(table).where(table.c.name == name, table.c.revoked_at.is_(None)))
            if not clash:
                raise
            raise KeyNameTakenError(name, clash[0].key_id) from None
        return raw, _info(ApiKeyRow(**values))

    @answered
    def get(self, key_id: str) -> KeyInfo | None:
        table = cast(Table, ApiKeyRow.__table__)
        rows = self._rows(select(table).where(table.c.key_id == key_id))
        return _info(rows[0]) if rows else None

    def _rows(self, statement: Select[Any]) -> list[ApiKeyRow]:
        with self._db.engine.connect() as connection:
            return [ApiKeyRow(**dict(r._mapping)) for r in connection.execute(statement)]

    @answered
    def verify(self, raw_key: str) -> KeyInfo | None:
        """The key's info if it exists, else None. A revoked or expired key's info too: the caller refuses it
        and says why (in open mode an unknown key is served, a revoked one must not be)."""
        digest = hash_key(raw_key)
        table = cast(Table, ApiKeyRow.__table__)
        rows = self._rows(select(table).where(table.c.key_hash == digest))
        if not rows or not hmac.compare_digest(rows[0].key_hash, digest):
            return None
        return _info(rows[0])

    @answered
    def list(self, team: str | None = None) -> list[KeyInfo]:
        table = cast(Table, ApiKeyRow.__table__)
        statement = select(table).order_by(table.c.created_at)
        if team is not None:
            statement = statement.where(table.c.team == team)
        return [_info(r) for r in self._rows(statement)]

    @answered
    def update(self, key_id: str, changes: Mapping[str, Any]) -> KeyInfo:
        """Changes a key's limits, models or expiry in place (UPDATABLE names them; None clears one), so
        apps keep their secret; every replica sees it on the key's next request. UnknownKeyError if absent;
        PeriodWithoutBudgetError (nothing changed) when a period is set and the key would have no budget."""
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {', '.join(sorted(unknown))}")
        values = dict(changes)
        if "max_budget_usd" in values and values["max_budget_usd"] is None and "budget_period" not in values:
            values["budget_period"] = None  # a cleared budget takes its period along: a new one starts monthly
        if "models" in values and values["models"] is not None:
            values["models"] = list(values["models"])
        table = cast(Table, ApiKeyRow.__table__)
        with self._db.engine.begin() as connection:
            budget = connection.execute(select(table.c.max_budget_usd).where(table.c.key_id == key_id)
                                        .with_for_update()).first()
            if budget is None:
                raise UnknownKeyError(key_id)
            if values.get("budget_period") is not None and values.get("max_budget_usd", budget[0]) is None:
                raise PeriodWithoutBudgetError(key_id)
            if values:
                connection.execute(update(table).where(table.c.key_id == key_id).values(**values))
        rows = self._rows(select(table).where(table.c.key_id == key_id))
        if not rows:
            raise UnknownKeyError(key_id)
        return _info(rows[0])

    @answered
    def revoke(self, key_id: str) -> KeyInfo:
        """Marks a key revoked (idempotent); UnknownKeyError if it never existed."""
        table = cast(Table, ApiKeyRow.__table__)
        with self._db.engine.begin() as connection:
            connection.execute(update(table).where(table.c.key_id == key_id, table.c.revoked_at.is_(None))
                               .values(revoked_at=datetime.now(UTC)))
        rows = self._rows(select(table).where(table.c.key_id == key_id))
        if not rows:
            raise UnknownKeyError(key_id)
        return _info(rows[0])

"""Budgets and rate limits, enforced atomically in the database so replicas cannot overspend together.

Before a request runs, the gateway reserves what it may cost (dollars, tokens, one request) in every
scope that limits it (its key, its team) with one conditional upsert per counter:
`reserved = reserved + x WHERE used + reserved + x <= limit`. The database serializes competing
upserts on a row (PostgreSQL row locks, SQLite's single writer), so two gateways racing for the last
dollars cannot both win. All counters of one request are reserved in one transaction, in a fixed
order, so either all hold or none does. When the request ends, `settle` turns the reservation into
what was really spent. A gateway killed mid-request leaves its reservation held until the window ends:
limits err on the side of not overspending.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, cast

from sqlalchemy import Connection, Table, case, update

from ledger.db import Database, answered, insert_for
from ledger.errors import LedgerError
from ledger.models import BudgetUsageRow

Period = Literal["minute", "hour", "day", "week", "month", "total"]
Metric = Literal["usd", "requests", "tokens"]
EPSILON = 1e-12


@dataclass(frozen=True)
class Limits:
    """What one key or team may use; None means no limit."""

    max_budget_usd: float | None = None
    budget_period: Period = "month"
    rpm_limit: int | None = None
    tpm_limit: int | None = None

    @property
    def any(self) -> bool:
        return self.max_budget_usd is not None or self.rpm_limit is not None or self.tpm_limit is not None


def window(period: Period, now: datetime) -> tuple[datetime, datetime | None]:
    """The UTC calendar window containing `now`: [start, end); 'total' never resets (end None)."""
    now = now.astimezone(UTC)
    if period == "minute":
        start = now.replace(second=0, microsecond=0)
        return start, start + timedelta(minutes=1)
    if period == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    if period == "week":
        start = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=7)
    if period == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        days = calendar.monthrange(now.year, now.month)[1]
        return start, start + timedelta(days=days)
    return datetime(1970, 1, 1, tzinfo=UTC), None


@dataclass(frozen=True)
class Counter:
    """One limited quantity of one scope in one window."""

    scope: str  # "key:<id>" | "team:<name>"
    metric: Metric
    window_start: int
    limit: float
    resets_at: datetime | None


@dataclass(frozen=True)
class Claim:
    """An amount reserved on a counter."""

    counter: Counter
    amount: float
    flexible: bool = False  # a guessed worst case: it shrinks to what is left, so it fits while anything is


class BudgetExceeded(LedgerError):
    """A counter would go over its limit."""

    def __init__(self, counter: Counter, requested: float, used: float | None = None, reserved: float = 0.0,
                 *, flexible: bool = False) -> None:
        what = {"usd": "dollar budget", "requests": "requests-per-minute limit",
                "tokens": "tokens-per-minute limit"}[counter.metric]
        money = "$" if counter.metric == "usd" else ""
        limit = f"{money}{counter.limit:g}"
        # Full, or only held by requests still in flight (their reservations are released when they finish):
        # the client must be told which, or it waits for a reset that a second's wait would have beaten.
        # (a request's count is what it reserved, finished or not: only tokens and dollars settle below a claim)
        fits_when_free = used is not None and (used < counter.limit - EPSILON if flexible
                                               else used + requested <= counter.limit + EPSILON)
        self.in_flight = counter.metric != "requests" and fits_when_free
        self.never_fits = not flexible and requested > counter.limit + EPSILON
        if self.never_fits:
            message = (f"this request's worst case ({money}{requested:g}) is more than {counter.scope}'s whole {what} "
                       f"({limit}); lower max_tokens or n")
        elif self.in_flight:
            message = (f"{counter.scope}'s {what} ({limit}, {money}{used:g} used) is held by requests in flight "
                       f"({money}{reserved:g} reserved); this request's worst case ({money}{requested:g}) fits once "
                       "they finish")
        else:
            if used is not None and counter.metric == "requests":
                used += reserved  # a request counts from its start: those in flight are this minute's too
            spent = f", {money}{used:g} used" if used is not None else ""
            left = counter.limit - used - reserved if used is not None else 0.0
            if counter.metric == "usd" and not flexible and left > EPSILON:
                # Not spent: this request's own worst case (its max_tokens) is more than what is left, and a
                # smaller one would be served now. "Has reached" sent its client to wait for the reset.
                message = (f"this request's worst case ({money}{requested:g}) is more than the {money}{left:g} left "
                           f"of {counter.scope}'s {what} ({limit}{spent}); lower max_tokens or n, or wait for the reset")
            else:
                message = f"{counter.scope} has reached its {what} ({limit}{spent})"
        super().__init__(message)
        self.counter = counter
        self.requested = requested


def counters(scope: str, limits: Limits, now: datetime) -> list[Counter]:
    """The counters a scope's limits imply at `now`."""
    found = []
    if limits.max_budget_usd is not None:
        start, end = window(limits.budget_period, now)
        found.append(Counter(scope, "usd", int(start.timestamp()), limits.max_budget_usd, end))
    start, end = window("minute", now)
    if limits.rpm_limit is not None:
        found.append(Counter(scope, "requests", int(start.timestamp()), limits.rpm_limit, end))
    if limits.tpm_limit is not None:
        found.append(Counter(scope, "tokens", int(start.timestamp()), limits.tpm_limit, end))
    return found


class BudgetStore:
    """Reserves and settles budget counters (synchronous: call from a worker thread)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._insert = insert_for(db.engine.dialect.name)

    @answered
    def reserve(self, claims: Sequence[Claim]) -> list[Claim]:
        """Reserves every claim or none and returns what was reserved (a flexible claim shrinks to what its
        counter has left, as LiteLLM admits a request while a budget is not spent); BudgetExceeded names the
        first counter that is full. The conditional upsert keeps it atomic: a replica that took the rest in
        between makes it fail, never overshoot."""
        ordered = sorted(claims, key=lambda c: (c.counter.scope, c.counter.metric, c.counter.window_start))
        reserved_claims = []
        with self._db.engine.begin() as connection:
            for claim in ordered:
                counter = claim.counter
                if claim.flexible:
                    used, held = self._usage(connection, counter.scope, counter.metric, counter.window_start)
                    room = counter.limit - used - held
                    if room > EPSILON:
                        claim = Claim(counter, min(claim.amount, room), flexible=True)
                if not self._reserve_one(connection, claim):
                    used, held = self._usage(connection, counter.scope, counter.metric, counter.window_start)
                    raise BudgetExceeded(counter, claim.amount, used, held,  # rolls back the claims before it
                                         flexible=claim.flexible)
                reserved_claims.append(claim)
        return reserved_claims

    def _reserve_one(self, connection: Connection, claim: Claim) -> bool:
        counter = claim.counter
        if claim.amount > counter.limit + EPSILON:
            return False
        table = cast(Table, BudgetUsageRow.__table__)
        statement = self._insert(table).values(scope=counter.scope, metric=counter.metric,
                                               window_start=counter.window_start, used=0.0, reserved=claim.amount)
        statement = statement.on_conflict_do_update(
            index_elements=["scope", "metric", "window_start"],
            set_={"reserved": table.c.reserved + statement.excluded.reserved},
            where=table.c.used + table.c.reserved + statement.excluded.reserved <= counter.limit + EPSILON,
        ).returning(table.c.used)
        return connection.execute(statement).first() is not None

    @answered
    def settle(self, claims: Sequence[Claim], actual: dict[Metric, float]) -> None:
        """Releases the reservations and adds what was really used (the estimate where unknown)."""
        table = cast(Table, BudgetUsageRow.__table__)
        with self._db.engine.begin() as connection:
            for claim in sorted(claims, key=lambda c: (c.counter.scope, c.counter.metric, c.counter.window_start)):
                counter = claim.counter
                spent = actual.get(counter.metric, claim.amount)
                released = table.c.reserved - claim.amount
                connection.execute(update(table).where(
                    table.c.scope == counter.scope, table.c.metric == counter.metric,
                    table.c.window_start == counter.window_start,
                ).values(used=table.c.used + spent, reserved=case((released < 0, 0.0), else_=released)))

    @answered
    def usage(self, scope: str, metric: Metric, window_start: int) -> tuple[float, float]:
        """(used, reserved) of one counter; (0, 0) if it was never touched."""
        with self._db.engine.connect() as connection:
            return self._usage(connection, scope, metric, window_start)

    @staticmethod
    def _usage(connection: Connection, scope: str, metric: Metric, window_start: int) -> tuple[float, float]:
        table = cast(Table, BudgetUsageRow.__table__)
        row = connection.execute(table.select().where(
            table.c.scope == scope, table.c.metric == metric, table.c.window_start == window_start)).first()
        return (0.0, 0.0) if row is None else (float(row.used), float(row.reserved))

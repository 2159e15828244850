"""The response cache's storage: answers keyed by a hash, in the ledger database so replicas share them.

Synchronous, like the rest of the ledger: the gateway calls it from worker threads, off the event loop. An entry
past its `expires_at` is never served, and each write prunes the expired ones and evicts the oldest entries beyond
`max_entries`, so the table stays bounded without a background job.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, func, select, text

from ledger.db import Database, answered, insert_for
from ledger.models import ResponseCacheRow

TABLE: Table = ResponseCacheRow.__table__  # type: ignore[assignment]  # declared as a Table
WRITE_LOCK = 7235104502  # PostgreSQL advisory lock a write prunes under (7235104501 is the migrations')


@dataclass(frozen=True)
class CachedAnswer:
    """One stored answer and what the ledger needs to record a request it serves."""

    key: str
    scope: str
    created_at: datetime
    expires_at: datetime
    request_id: str  # the request that was answered: a hit's row points at it
    route: str
    provider_model: str | None
    prompt_tokens: int
    completion_tokens: int
    reference_cost_usd: float | None
    body: dict[str, Any]


COLUMNS = tuple(f.name for f in fields(CachedAnswer))


def evict_interval(max_entries: int) -> int:
    """How many writes apart a writer counts the table: 1 (every write) up to 100 entries, then 1% of the bound,
    at most 64, so the overshoot stays within 1% of `max_entries` per writer."""
    return max(1, min(64, max_entries // 100))


class ResponseCache:
    """Reads and writes cached answers; `put` keeps the table within `max_entries`."""

    def __init__(self, db: Database, *, max_entries: int) -> None:
        self._db = db
        self._max_entries = max_entries
        # Counting the table costs a scan (~50 ms at 100,000 entries on PostgreSQL here), so a writer counts on
        # every `_evict_every`-th write only: the table may hold that many entries more per writer until it does.
        self._evict_every = evict_interval(max_entries)
        self._writes = itertools.count(1)  # next() is atomic under the GIL: the writers are worker threads

    @answered
    def get(self, key: str, now: datetime, max_age_s: float | None = None) -> CachedAnswer | None:
        """The live entry under `key` (not expired; at most `max_age_s` old when given), or None."""
        statement = select(TABLE).where(TABLE.c.key == key, TABLE.c.expires_at > now)
        if max_age_s is not None:
            statement = statement.where(TABLE.c.created_at >= now - timedelta(seconds=max_age_s))
        with self._db.engine.connect() as connection:
            row = connection.execute(statement).mappings().first()
        return None if row is None else CachedAnswer(**{name: row[name] for name in COLUMNS})

    @answered
    def put(self, answer: CachedAnswer) -> None:
        """Stores (or replaces) an entry, then drops expired entries and the oldest beyond `max_entries` (on
        PostgreSQL unless another write is doing so: entries written meanwhile may exceed it until the next)."""
        values = {name: getattr(answer, name) for name in COLUMNS}
        dialect = self._db.engine.dialect.name
        upsert = insert_for(dialect)(TABLE).values(**values)
        upsert = upsert.on_conflict_do_update(index_elements=["key"],
                                              set_={k: v for k, v in values.items() if k != "key"})
        with self._db.engine.begin() as connection:
            connection.execute(upsert)
            # One write prunes at a time, across replicas: two pruning and evicting the same rows in different
            # orders deadlocked (PostgreSQL aborted one: its answer was lost, an error logged). A write that finds
            # another pruning leaves it to that one rather than wait (a waiting write would hold a worker thread);
            # SQLite runs whole writes one at a time already.
            if dialect == "postgresql" and not connection.execute(
                    text("SELECT pg_try_advisory_xact_lock(:lock)"), {"lock": WRITE_LOCK}).scalar_one():
                return
            connection.execute(delete(TABLE).where(TABLE.c.expires_at <= answer.created_at))  # indexed: cheap
            if next(self._writes) % self._evict_every:
                return
            count = int(connection.execute(select(func.count()).select_from(TABLE)).scalar_one())
            if count > self._max_entries:
                oldest = select(TABLE.c.key).order_by(TABLE.c.created_at, TABLE.c.key).limit(count - self._max_entries)
                connection.execute(delete(TABLE).where(TABLE.c.key.in_(oldest)))

    @answered
    def count(self) -> int:
        """Entries stored, live or not yet pruned."""
        with self._db.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(TABLE)).scalar_one())

"""Ledger fixtures: a migrated database on SQLite, and on PostgreSQL when one is available."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger import Database, RequestRecord
from tests.support.postgres import POSTGRES_URL, fresh_schema

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path}/ledger.db")
        database.migrate()
        yield database
        database.dispose()
        return
    if not POSTGRES_URL:
        pytest.skip("DRAFTGATE_TEST_POSTGRES_URL is not set (scripts/postgres.sh starts one)")
    with fresh_schema(POSTGRES_URL) as url:
        database = Database(url)
        database.migrate()
        yield database
        database.dispose()


def unmigrated(backend: str, tmp_path: Path, stack: contextlib.ExitStack) -> Database:
    """An empty database on `backend` for a migration test to seed at an old revision; `stack` disposes of it."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/old.db"
    elif not POSTGRES_URL:
        pytest.skip("DRAFTGATE_TEST_POSTGRES_URL is not set (scripts/postgres.sh starts one)")
    else:
        url = stack.enter_context(fresh_schema(POSTGRES_URL))
    database = Database(url)
    stack.callback(database.dispose)
    return database


T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def record(request_id: str, **kw: object) -> RequestRecord:
    base: dict[str, object] = dict(request_id=request_id, created_at=T0, finished_at=T0 + timedelta(seconds=1),
                                   key_id="key_a", team="research", model_alias="gpt-4o-mini", route="hosted",
                                   provider_model="openai/gpt-4o-mini", prompt_tokens=10, completion_tokens=20,
                                   latency_ms=100.0, status="ok", status_code=200, hosted_cost_usd=0.001)
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]

"""Ledger fixtures: a migrated database on SQLite, and on PostgreSQL when one is available."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from ledger import Database, RequestRecord

POSTGRES_URL = os.environ.get("DRAFTGATE_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path}/ledger.db")
    else:
        if not POSTGRES_URL:
            pytest.skip("DRAFTGATE_TEST_POSTGRES_URL is not set (scripts/postgres.sh starts one)")
        schema = f"t_{uuid.uuid4().hex[:10]}"
        admin = Database(POSTGRES_URL)
        with admin.engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        admin.dispose()
        sep = "&" if "?" in POSTGRES_URL else "?"
        database = Database(f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}")
    database.migrate()
    yield database
    database.dispose()


T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def record(request_id: str, **kw: object) -> RequestRecord:
    base: dict[str, object] = dict(request_id=request_id, created_at=T0, finished_at=T0 + timedelta(seconds=1),
                                   key_id="key_a", team="research", model_alias="gpt-4o-mini", route="hosted",
                                   provider_model="openai/gpt-4o-mini", prompt_tokens=10, completion_tokens=20,
                                   latency_ms=100.0, status="ok", status_code=200, hosted_cost_usd=0.001)
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]

"""A throwaway schema on the test PostgreSQL, so tests never see each other's rows."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

from sqlalchemy import text

from ledger import Database

POSTGRES_URL = os.environ.get("DRAFTGATE_TEST_POSTGRES_URL")


@contextlib.contextmanager
def fresh_schema(base_url: str, prefix: str = "t") -> Iterator[str]:
    """Yields a URL whose search_path is a new, empty schema; drops it afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = Database(base_url)
    with admin.engine.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{base_url}{'&' if '?' in base_url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()

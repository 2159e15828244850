"""Virtual keys on a real database: one live key per name, enforced by the database itself."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from ledger import Database, KeyNameTakenError, KeyStore
from ledger.db import MIGRATIONS
from ledger.keys import hash_key
from tests.ledger.conftest import BACKENDS, unmigrated


def test_two_live_keys_cannot_share_a_name_even_when_created_at_once(db: Database) -> None:
    """Two `keys create` racing past the gateway's check both succeeded: the database now refuses the second."""
    store = KeyStore(db)
    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda _: _create(store, "app"), range(6)))
    winners = [o for o in outcomes if isinstance(o, str)]
    assert len(winners) == 1, outcomes
    assert all(isinstance(o, KeyNameTakenError) and o.key_id == winners[0] for o in outcomes if o is not winners[0])
    assert f"the live key {winners[0]} is already named 'app'" in str(outcomes[1 if outcomes[0] == winners[0] else 0])
    store.create("other", None)  # another name is fine
    store.revoke(winners[0])
    _, again = store.create("app", None)  # a revoked key's name is free again, and twice revoked stays free
    store.revoke(again.key_id)
    store.create("app", None)
    assert sorted(k.name for k in store.list() if k.revoked_at is None) == ["app", "other"]


def _create(store: KeyStore, name: str) -> str | KeyNameTakenError:
    try:
        return store.create(name, None)[1].key_id
    except KeyNameTakenError as exc:
        return exc


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrading_a_ledger_with_twin_key_names_keeps_every_key_working(backend: str, tmp_path: Path) -> None:
    """Migration 0006 adds the unique index; twins created before it keep working: the oldest keeps the name,
    the later ones are renamed `NAME (duplicate KEY_ID)`; revoked keys are left as they are."""
    with contextlib.ExitStack() as stack:
        db = unmigrated(backend, tmp_path, stack)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        long_name = "n" * 128
        keys = [("key_b", "app", "2026-11-02", None), ("key_a", "app", "2026-11-01", None),
                ("key_c", "app", "2026-11-03", None), ("key_r", "app", "2026-10-01", "2026-10-02"),
                ("key_l1", long_name, "2026-11-01", None), ("key_l2", long_name, "2026-11-02", None),
                ("key_solo", "solo", "2026-11-01", None)]
        with db.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0005")
            for key_id, name, created, revoked in keys:
                connection.execute(text("INSERT INTO api_keys (key_id, name, key_hash, prefix, created_at, revoked_at) "
                                        "VALUES (:id, :name, :h, 'sk-dg-abcd', :created, :revoked)"),
                                   {"id": key_id, "name": name, "h": hash_key(f"sk-dg-{key_id}"),
                                    "created": f"{created} 00:00:00", "revoked": revoked and f"{revoked} 00:00:00"})
        db.migrate()
        store = KeyStore(db)
        names = {k.key_id: k.name for k in store.list()}
        assert names == {"key_a": "app", "key_b": "app (duplicate key_b)", "key_c": "app (duplicate key_c)",
                         "key_r": "app", "key_l1": long_name, "key_l2": "n" * 109 + " (duplicate key_l2)",
                         "key_solo": "solo"}
        assert len(names["key_l2"]) == 128  # the column's length
        assert all(store.verify(f"sk-dg-{key_id}") is not None for key_id, *_ in keys if key_id != "key_r")
        with pytest.raises(KeyNameTakenError) as info:
            store.create("app", None)
        assert info.value.key_id == "key_a"


def test_a_pool_with_no_free_connection_is_database_unavailable(db: Database) -> None:
    """Every connection busy past the pool's wait (a slow or stuck database under load) raised SQLAlchemy's
    pool TimeoutError, which the gateway answered as a 500 internal error per request; it is the same
    "unavailable, retry" as a database that does not answer."""
    from sqlalchemy import create_engine

    from ledger import DatabaseUnavailableError

    store = KeyStore(db)
    db.engine = create_engine(db.url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    with db.engine.connect(), pytest.raises(DatabaseUnavailableError, match="no free connection"):
        store.verify("sk-dg-anything")
    assert store.verify("sk-dg-anything") is None  # the connection is back: answered again

"""The response cache's table (migration 0009) on SQLite and PostgreSQL: expiry, eviction, upgrade and downgrade."""

from __future__ import annotations

import contextlib
import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import inspect

from ledger import CachedAnswer, Database, ResponseCache
from ledger.cache import evict_interval
from tests.ledger.conftest import BACKENDS, T0, record, unmigrated
from tests.ledger.test_reports import _migrations, _seed_at_revision


def answer(key: str, created_at: datetime, ttl_s: float = 60, **kw: object) -> CachedAnswer:
    base: dict[str, object] = dict(key=key, scope="team:research", created_at=created_at,
                                   expires_at=created_at + timedelta(seconds=ttl_s), request_id=f"req-{key}",
                                   route="hosted", provider_model="openai/gpt-4o-mini", prompt_tokens=3,
                                   completion_tokens=5, reference_cost_usd=0.001,
                                   body={"object": "chat.completion", "choices": [{"message": {"content": "ünï"}}]})
    base.update(kw)
    return CachedAnswer(**base)  # type: ignore[arg-type]


def test_a_large_bound_is_counted_every_few_writes_and_overshot_by_at_most_that(db: Database) -> None:
    """Counting the table on every write cost a scan each (~50 ms at 100,000 entries on PostgreSQL): a bound of
    1,000 is counted every 10th write, so 1,025 writes leave at most 1,009 entries, the oldest evicted."""
    assert [evict_interval(n) for n in (1, 99, 100, 1_000, 6_400, 100_000)] == [1, 1, 1, 10, 64, 64]
    cache = ResponseCache(db, max_entries=1_000)
    start = datetime.now(UTC)
    for i in range(1_025):
        cache.put(answer(f"k{i:04d}", start + timedelta(milliseconds=i)))
    assert 1_000 <= cache.count() <= 1_009
    assert cache.get("k0000", datetime.now(UTC)) is None and cache.get("k1024", datetime.now(UTC)) is not None


def test_expired_entries_are_not_served_and_the_oldest_are_evicted(db: Database) -> None:
    cache = ResponseCache(db, max_entries=2)
    now = datetime.now(UTC)
    cache.put(answer("a", now - timedelta(seconds=30), ttl_s=10))  # already expired
    assert cache.get("a", now) is None
    cache.put(answer("b", now - timedelta(seconds=3)))  # its write prunes the expired one
    assert cache.count() == 1
    got = cache.get("b", now)
    assert got is not None and got.body["choices"][0]["message"]["content"] == "ünï" and got.request_id == "req-b"
    assert got.created_at == now - timedelta(seconds=3)
    assert cache.get("b", now, max_age_s=1) is None  # older than the request accepts
    cache.put(answer("c", now - timedelta(seconds=2)))
    cache.put(answer("d", now - timedelta(seconds=1)))
    assert cache.count() == 2 and cache.get("b", now) is None and cache.get("d", now) is not None
    cache.put(answer("c", now, reference_cost_usd=None))  # replaced in place, not added
    replaced = cache.get("c", now)
    assert cache.count() == 2 and replaced is not None and replaced.reference_cost_usd is None


def test_concurrent_writes_neither_fail_nor_overfill(db: Database) -> None:
    """Replicas (and one replica's worker threads) store answers at once, replacing keys and pruning expired ones;
    on PostgreSQL some writes died in deadlocks (their answers lost) before one write at a time pruned."""
    cache = ResponseCache(db, max_entries=20)
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            try:
                cache.put(answer(f"k{rng.randrange(40)}", datetime.now(UTC), ttl_s=rng.choice([0.01, 60])))
            except Exception as exc:  # noqa: BLE001 - collected, then asserted on
                errors.append(exc)

    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    cache.put(answer("last", datetime.now(UTC)))  # the next write evicts any written while another pruned
    assert cache.count() <= 20 and cache.get("last", datetime.now(UTC)) is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_migration_0009_upgrades_and_downgrades(backend: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with contextlib.ExitStack() as stack:
        db = unmigrated(backend, tmp_path, stack)
        _seed_at_revision(db, "0008", [record("old", created_at=T0)])
        db.migrate()
        with db.engine.connect() as connection:
            assert "response_cache" in inspect(connection).get_table_names()
        cache = ResponseCache(db, max_entries=10)
        cache.put(answer("k", datetime.now(UTC)))
        assert cache.get("k", datetime.now(UTC)) is not None and db.get_record("old") is not None
        config = _migrations()
        with db.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0008")
            assert "response_cache" not in inspect(connection).get_table_names()
        assert db.get_record("old") is not None
        db.migrate()  # and up again, empty
        assert ResponseCache(db, max_entries=10).count() == 0

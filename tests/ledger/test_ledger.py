"""The ledger on a real database: migrations, idempotent inserts, keys, and the crash-safe writer."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import orjson
import pytest
from sqlalchemy import event

from ledger import (
    Database,
    KeyStore,
    LedgerWriter,
    PeriodWithoutBudgetError,
    Price,
    PriceBook,
    UnknownKeyError,
)
from ledger.db import INSERT_CHUNK
from ledger.keys import hash_key
from tests.ledger.conftest import T0, record
from tests.support.postgres import POSTGRES_URL, fresh_schema


def test_migrate_twice_and_roundtrip(db: Database) -> None:
    db.migrate()
    row = record("r1", detail={"verdicts": [{"passed": False}], "p": 0.5}, hosted_cost_usd=None, unpriced=True)
    assert db.insert_records([row]) == 1
    got = db.get_record("r1")
    assert got == row and got.created_at.tzinfo is not None and got.cost_usd is None


def test_inserts_are_idempotent(db: Database) -> None:
    assert db.insert_records([record("a"), record("b")]) == 2
    assert db.insert_records([record("a"), record("c")]) == 1
    assert db.count_records() == 3


def test_batches_of_any_size_reuse_a_few_insert_statements(db: Database) -> None:
    """Each distinct INSERT text is a prepared statement the driver caches per connection (sqlite3: 128,
    each one large for many rows): batch sizes must map onto a few statements, or memory grows for hours."""
    statements: set[str] = set()

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO REQUESTS"):
            statements.add(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        n = 0
        for size in range(1, 300, 7):
            assert db.insert_records([record(f"s{n + i}") for i in range(size)]) == size
            n += size
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    assert db.count_records() == n
    assert 1 < len(statements) <= INSERT_CHUNK.bit_length()  # sizes 256, 128, ..., 1


def test_keys_are_hashed_verified_and_revoked(db: Database, tmp_path: Path) -> None:
    store = KeyStore(db)
    raw, info = store.create("app", "research")
    assert store.verify(raw) == info and store.verify(raw + "x") is None
    assert [k.key_id for k in store.list("research")] == [info.key_id] and store.list("sales") == []
    assert store.revoke(info.key_id).revoked_at is not None
    revoked = store.verify(raw)  # its info, so the gateway refuses it saying why (open mode too), not None
    assert revoked is not None and revoked.key_id == info.key_id and revoked.revoked_at is not None
    with pytest.raises(UnknownKeyError):
        store.revoke("key_missing")
    if db.is_sqlite:
        for path in tmp_path.glob("ledger.db*"):
            assert raw.encode() not in path.read_bytes()


def test_keys_keep_their_models_and_expiry_and_an_older_ledger_upgrades(db: Database, tmp_path: Path) -> None:
    from datetime import timedelta

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from ledger.db import MIGRATIONS

    store = KeyStore(db)
    raw, info = store.create("scoped", None, models=["auto", "local/diffusiongemma"], expires_at=T0 + timedelta(days=1))
    again = store.verify(raw)
    assert again == info and again is not None and again.models == ("auto", "local/diffusiongemma")
    assert again.expires_at == T0 + timedelta(days=1)
    assert again.expired(T0 + timedelta(days=2)) and not again.expired(T0)
    changed = store.update(info.key_id, {"models": ["auto"], "expires_at": None, "rpm_limit": 5})
    assert changed.models == ("auto",) and changed.expires_at is None and changed.limits.rpm_limit == 5
    assert store.verify(raw) == changed
    assert store.update(info.key_id, {"models": None, "budget_period": None}).models is None
    with pytest.raises(UnknownKeyError):
        store.update("key_missing", {"rpm_limit": 1})
    with pytest.raises(UnknownKeyError):  # not a budget error: there is no key
        store.update("key_missing", {"budget_period": "day"})
    with pytest.raises(PeriodWithoutBudgetError):  # no budget: the period would limit nothing
        store.update(info.key_id, {"budget_period": "day", "rpm_limit": 9})
    assert store.get(info.key_id) == store.verify(raw) and store.verify(raw).limits.rpm_limit == 5  # unchanged
    with pytest.raises(ValueError, match="not updatable: key_hash"):
        store.update(info.key_id, {"key_hash": "x"})
    # A ledger at 0002 (before scopes) with a key in it: after the upgrade the key works, unscoped.
    old = Database(f"sqlite:///{tmp_path}/old.db")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with old.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
    old_store = KeyStore(old)
    with old.engine.begin() as connection:
        connection.execute(text("INSERT INTO api_keys (key_id, name, key_hash, prefix, created_at) "
                                "VALUES ('key_old', 'old', :h, 'sk-dg-abcd', '2026-11-01 00:00:00.000000')"),
                           {"h": hash_key("sk-dg-old-key")})
    old.migrate()
    kept = old_store.verify("sk-dg-old-key")
    assert kept is not None and kept.key_id == "key_old" and kept.models is None and kept.expires_at is None
    old.dispose()


def test_prices_from_the_litellm_map_and_overrides() -> None:
    book = PriceBook({"cheap-alias": Price(1.0, 2.0)})
    mini = book.lookup("openai/gpt-4o-mini")
    assert mini is not None and mini == book.lookup("gpt-4o-mini")
    assert book.cost_usd("openai/gpt-4o-mini", 1000, 500) == pytest.approx(
        1000 * mini.input_per_mtok / 1e6 + 500 * mini.output_per_mtok / 1e6)
    assert book.cost_usd("cheap-alias", 1_000_000, 1_000_000) == pytest.approx(3.0)
    assert book.lookup("openai/no-such-model") is None and book.cost_usd("nothing", 1, 1) is None


def test_an_embedding_model_listed_with_an_input_price_only_is_priced() -> None:
    """LiteLLM's map gives mistral-embed an input price and no output one (an embedding has no output): its
    embeddings requests were recorded as unpriced although their price is known."""
    book = PriceBook()
    assert book.cost_usd("mistral/mistral-embed", 1_000_000, 0) == pytest.approx(0.1)
    price = book.lookup("mistral/mistral-embed")
    assert price is not None and price.output_per_mtok == 0.0


async def test_writer_batches_and_a_clean_close_leaves_no_journal(db: Database, tmp_path: Path) -> None:
    writer = LedgerWriter(db, tmp_path / "j" / "ledger.journal", flush_interval_s=0.05)
    await writer.start()
    for i in range(300):
        writer.record(record(f"w{i}"))
    await writer.flush()
    assert db.count_records() == 300 and writer.pending == 0
    await writer.close()
    assert list((tmp_path / "j").iterdir()) == []


async def test_a_crash_loses_nothing_and_counts_nothing_twice(db: Database, tmp_path: Path) -> None:
    journal = tmp_path / "ledger.journal"
    crashed = LedgerWriter(db, journal, flush_interval_s=60)
    await crashed.start()
    for i in range(5):
        crashed.record(record(f"c{i}"))
    (committed,) = journal.parent.glob("ledger.journal.*")
    saved = committed.read_bytes()
    await crashed.flush()  # c0..c4 committed and their segment deleted ...
    committed.write_bytes(saved)  # ... except the process died between the commit and the delete
    for i in range(5, 8):
        crashed.record(record(f"c{i}"))  # journalled, never flushed
    current = max(journal.parent.glob("ledger.journal.*"), key=lambda p: int(p.suffix[1:]))
    current.write_bytes(current.read_bytes() + b'{"request_id": "torn", "creat')  # a half-written line
    crashed._task.cancel()  # type: ignore[union-attr]  # no graceful close: as after kill -9,
    os.close(crashed._fd)  # type: ignore[arg-type]  # which also drops the process's journal lock

    restarted = LedgerWriter(db, journal)
    await restarted.start()
    assert db.count_records() == 8
    assert all(db.get_record(f"c{i}") is not None for i in range(8))
    await restarted.close()
    assert list(journal.parent.glob("ledger.journal.*")) == []


async def test_a_journal_line_that_is_json_but_no_row_is_skipped_not_fatal(db: Database, tmp_path: Path) -> None:
    """A corrupt line that still parses as JSON (a damaged segment after a host crash) stopped the replay with an
    AttributeError, and so every start of the gateway, until the segment was deleted by hand with its good rows."""
    good = record("good").to_json()
    (tmp_path / "ledger-9.journal.0").write_bytes(b"\n".join([b"[]", good, b"7", b"null", b'"x"', b"{}"]) + b"\n")
    writer = LedgerWriter(db, tmp_path / "ledger-1.journal", recover_glob="ledger-*.journal.*")
    await writer.start()
    assert db.get_record("good") is not None and db.count_records() == 1
    await writer.close()
    assert list(tmp_path.glob("ledger-*.journal.*")) == []


def test_timestamps_survive_as_utc(db: Database) -> None:
    db.insert_records([record("t")])
    assert db.get_record("t").created_at == T0  # type: ignore[union-attr]


def test_unreachable_database_fails_ping(tmp_path: Path) -> None:
    assert Database(f"sqlite:///{tmp_path}/ok.db").ping()
    assert not Database("postgresql+psycopg://nobody@127.0.0.1:1/none").ping()


def test_writer_survives_a_failing_database(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = Database(f"sqlite:///{tmp_path}/l.db")
        db.migrate()
        writer = LedgerWriter(db, tmp_path / "ledger.journal", flush_interval_s=0.01)
        await writer.start()
        real_insert = db.insert_records
        db.insert_records = lambda rows: (_ for _ in ()).throw(RuntimeError("db down"))  # type: ignore[method-assign]
        writer.record(record("kept"))
        await asyncio.sleep(0.1)
        assert writer.pending == 1  # still queued and journalled
        db.insert_records = real_insert  # type: ignore[method-assign]
        await writer.close()
        assert db.get_record("kept") is not None

    asyncio.run(scenario())


async def test_a_worker_replays_orphans_but_not_a_live_workers_journal(db: Database, tmp_path: Path) -> None:
    live = LedgerWriter(db, tmp_path / "ledger-1.journal", flush_interval_s=60, recover_glob="ledger-*.journal.*")
    await live.start()
    live.record(record("live-row"))  # journalled by a running worker, not flushed yet
    orphan = tmp_path / "ledger-99.journal.0"  # left by a worker that was killed
    orphan.write_bytes((tmp_path / "ledger-1.journal.0").read_bytes().replace(b"live-row", b"dead-row"))
    other = LedgerWriter(db, tmp_path / "ledger-2.journal", recover_glob="ledger-*.journal.*")
    await other.start()
    assert db.get_record("dead-row") is not None and not orphan.exists()
    assert db.get_record("live-row") is None and (tmp_path / "ledger-1.journal.0").exists()
    await live.close()
    await other.close()
    assert db.get_record("live-row") is not None


def test_replicas_migrating_at_once_all_succeed(tmp_path: Path) -> None:
    """Workers and replicas start together and each migrates: none may fail or double-create."""
    urls = [f"sqlite:///{tmp_path}/fresh.db"]
    with contextlib.ExitStack() as stack:
        if POSTGRES_URL:
            urls.append(stack.enter_context(fresh_schema(POSTGRES_URL, "m")))
        _migrate_concurrently(urls)


def _head() -> str:
    """The newest migration this version has."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from ledger.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def _migrate_concurrently(urls: list[str]) -> None:
    import subprocess
    import sys

    from sqlalchemy import text

    for url in urls:
        code = f"from ledger import Database; Database({url!r}).migrate()"
        workers = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
                   for _ in range(4)]
        failures = [w.stderr.read()[-800:] for w in workers if w.wait(120) != 0]  # type: ignore[union-attr]
        assert failures == [], (url, failures)
        db = Database(url)
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [_head()]
        db.dispose()


async def test_a_row_the_database_refuses_is_set_aside_and_blocks_nothing(db: Database, tmp_path: Path) -> None:
    """One row breaking a constraint used to fail its whole batch forever, and every restart after a crash."""
    journal = tmp_path / "ledger.journal"
    writer = LedgerWriter(db, journal, flush_interval_s=60)
    await writer.start()
    writer.record(record("good-1"))
    writer.record(record("poison", model_alias=None))  # NOT NULL: refused by every database
    writer.record(record("good-2"))
    await writer.flush()
    assert db.get_record("good-1") is not None and db.get_record("good-2") is not None
    assert db.get_record("poison") is None and writer.pending == 0
    (rejected,) = [orjson.loads(line) for line in (tmp_path / "ledger-rejected.jsonl").read_bytes().splitlines()]
    assert rejected["record"]["request_id"] == "poison" and rejected["reason"]
    # The same row in a crashed process's journal: the restart replays the rest and starts.
    writer.record(record("poison-2", model_alias=None))
    writer.record(record("good-3"))
    writer._task.cancel()  # type: ignore[union-attr]  # as after kill -9
    os.close(writer._fd)  # type: ignore[arg-type]
    restarted = LedgerWriter(db, journal)
    await restarted.start()
    assert db.get_record("good-3") is not None and db.get_record("poison-2") is None
    assert len((tmp_path / "ledger-rejected.jsonl").read_bytes().splitlines()) == 2
    await restarted.close()


def test_text_longer_than_its_column_is_cut_to_fit_not_refused(db: Database) -> None:
    long_key, long_model = "config:" + "k" * 100, "openai/" + "m" * 400
    assert db.insert_records([record("long", key_id=long_key, provider_model=long_model)]) == 1
    stored = db.get_record("long")
    assert stored is not None and stored.key_id == long_key[:64] and stored.provider_model == long_model[:256]
    assert stored.detail is not None and stored.detail["truncated_fields"] == ["key_id", "provider_model"]


def test_a_nul_character_is_replaced_not_refused_on_every_database(db: Database) -> None:
    """PostgreSQL's text cannot hold NUL: a request whose `model` had one (the 404's error quotes it too) was
    answered, then its row set aside in ledger-rejected.jsonl on PostgreSQL only."""
    assert db.insert_records([record("nul", model_alias="gpt\x00x", error="no model `gpt\x00x`")]) == 1
    stored = db.get_record("nul")
    assert stored is not None and (stored.model_alias, stored.error) == ("gpt\ufffdx", "no model `gpt\ufffdx`")
    assert stored.detail == {"nul_replaced_fields": ["error", "model_alias"]}


async def test_closing_while_the_database_refuses_writes_keeps_the_rows_for_the_next_start(tmp_path: Path) -> None:
    """A gateway stopped while its database is down (here: the table is away) raised from close(), so the
    shutdown failed with a traceback; it now stops, and the next start writes the journalled rows."""
    from sqlalchemy import text

    db = Database(f"sqlite:///{tmp_path}/ledger.db")
    db.migrate()
    writer = LedgerWriter(db, tmp_path / "ledger-1.journal", flush_interval_s=60, recover_glob="ledger-*.journal.*")
    await writer.start()
    writer.record(record("kept"))
    with db.engine.begin() as connection:
        connection.execute(text("ALTER TABLE requests RENAME TO requests_away"))
    await writer.close()
    with db.engine.begin() as connection:
        connection.execute(text("ALTER TABLE requests_away RENAME TO requests"))
    restarted = LedgerWriter(db, tmp_path / "ledger-2.journal", recover_glob="ledger-*.journal.*")
    await restarted.start()
    assert db.get_record("kept") is not None and not list(tmp_path.glob("ledger-1.journal.*"))
    await restarted.close()
    db.dispose()


async def test_a_journal_is_replayed_only_into_the_database_it_was_written_for(tmp_path: Path) -> None:
    """Gateways on different databases may share a data dir: a crashed one's rows must not land in the other's."""
    first, second = (Database(f"sqlite:///{tmp_path}/{name}.db") for name in ("first", "second"))
    for database in (first, second):
        database.migrate()
    crashed = LedgerWriter(first, tmp_path / "ledger-1.journal", flush_interval_s=60, recover_glob="ledger-*.journal.*")
    await crashed.start()
    crashed.record(record("first-row"))
    crashed._task.cancel()  # type: ignore[union-attr]  # as after kill -9
    os.close(crashed._fd)  # type: ignore[arg-type]
    other = LedgerWriter(second, tmp_path / "ledger-2.journal", recover_glob="ledger-*.journal.*")
    await other.start()
    assert second.get_record("first-row") is None and (tmp_path / "ledger-1.journal.0").exists()
    await other.close()
    owner = LedgerWriter(first, tmp_path / "ledger-3.journal", recover_glob="ledger-*.journal.*")
    await owner.start()
    assert first.get_record("first-row") is not None and not (tmp_path / "ledger-1.journal.0").exists()
    await owner.close()
    for database in (first, second):
        database.dispose()


def test_a_postgres_host_that_never_answers_fails_at_the_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket that takes the connection and says nothing (a database host frozen behind a load balancer):
    libpq has no connect timeout of its own, so migrate (and every key lookup or ledger write) hung there."""
    import socket
    import threading
    import time

    from ledger import LedgerError
    from ledger import db as ledger_db

    monkeypatch.setattr(ledger_db, "PG_CONNECT_TIMEOUT_S", 1)
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel completes the handshake; nobody ever reads
    port = silent.getsockname()[1]
    outcome: list[BaseException | None] = []

    def migrate() -> None:
        database = Database(f"postgresql+psycopg://user:secret@127.0.0.1:{port}/ledger")
        try:
            database.migrate()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)
        finally:
            database.dispose()

    started = time.monotonic()
    worker = threading.Thread(target=migrate, daemon=True)
    worker.start()
    worker.join(20)
    silent.close()
    assert not worker.is_alive(), "still waiting for the silent database after 20 s"
    assert isinstance(outcome[0], LedgerError) and time.monotonic() - started < 20
    assert "secret" not in str(outcome[0])


def test_a_full_requests_per_minute_limit_counts_the_requests_in_flight(db: Database) -> None:
    """An rpm 429 said "(2, 0 used)" while two requests of the minute were still running: they count from
    their start, so the message says 2 used."""
    from ledger.budgets import BudgetExceeded, BudgetStore, Claim, Limits, counters

    store = BudgetStore(db)
    limit = counters("key:k", Limits(rpm_limit=2), T0)[0]
    first = store.reserve([Claim(limit, 1.0)])
    store.reserve([Claim(limit, 1.0)])
    store.settle(first, {"requests": 1.0})  # one finished, one still running
    with pytest.raises(BudgetExceeded) as info:
        store.reserve([Claim(limit, 1.0)])
    assert "has reached its requests-per-minute limit (2, 2 used)" in str(info.value)
    assert not info.value.in_flight  # a request is counted once it starts: waiting for it does not help


def test_a_dollar_refusal_says_when_only_the_requests_own_worst_case_does_not_fit(db: Database) -> None:
    """$0.30 of $1 left and a worst case (its max_tokens) of $0.50: the 429 said the budget "has reached" its
    limit, so the client waited for the reset, though a smaller max_tokens would have been served at once."""
    from ledger.budgets import BudgetExceeded, BudgetStore, Claim, Limits, counters

    store = BudgetStore(db)
    budget = counters("team:t", Limits(max_budget_usd=1.0), T0)[0]
    store.settle(store.reserve([Claim(budget, 0.7)]), {"usd": 0.7})
    with pytest.raises(BudgetExceeded) as info:
        store.reserve([Claim(budget, 0.5)])
    assert str(info.value) == ("this request's worst case ($0.5) is more than the $0.3 left of team:t's dollar budget "
                               "($1, $0.7 used); lower max_tokens or n, or wait for the reset")
    store.settle(store.reserve([Claim(budget, 0.3)]), {"usd": 0.3})  # what is left is served
    with pytest.raises(BudgetExceeded, match=r"^team:t has reached its dollar budget \(\$1, \$1 used\)$"):
        store.reserve([Claim(budget, 0.1)])

"""The ledger database: a synchronous SQLAlchemy engine, used from worker threads off the event loop."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, String, create_engine, event, func, inspect, make_url, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ledger.errors import DatabaseUnavailableError, LedgerError
from ledger.models import RequestRow, usage_daily, usage_daily_user
from ledger.records import RequestRecord
from ledger.rollup import GROUP_COLUMNS, USER_GROUP_COLUMNS, aggregate, group_key, user_group_key

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord))
INSERT_CHUNK = 256  # rows per INSERT at most: well under SQLite's bound-parameter limit


_STRING_LIMITS = tuple((c.name, c.type.length) for c in RequestRow.__table__.columns
                       if isinstance(c.type, String) and c.type.length)


_TEXT_COLUMNS = tuple(c.name for c in RequestRow.__table__.columns if isinstance(c.type, String))  # Text too


def fit_columns(record: RequestRecord) -> RequestRecord:
    """The record with any text longer than its column cut to fit, and any NUL character replaced by U+FFFD
    (both marked in `detail`). PostgreSQL refuses an over-long value and any NUL in text (a client's `model`
    holds what it sends, and the error quotes it): the row was set aside, lost from the ledger, on PostgreSQL
    only. SQLite stores either; both are fitted alike so the two ledgers read the same."""
    nul: dict[str, Any] = {name: value.replace("\x00", "\ufffd") for name in _TEXT_COLUMNS
                           if isinstance(value := getattr(record, name), str) and "\x00" in value}
    record = replace(record, **nul) if nul else record
    cut: dict[str, Any] = {name: value[:limit] for name, limit in _STRING_LIMITS
                           if isinstance(value := getattr(record, name), str) and len(value) > limit}
    if not cut and not nul:
        return record
    detail = {**(record.detail or {}), **({"truncated_fields": sorted(cut)} if cut else {}),
              **({"nul_replaced_fields": sorted(nul)} if nul else {})}
    return replace(record, **cut, detail=detail)


def chunk_sizes(n: int) -> list[int]:
    """Splits n rows into full chunks plus powers of two, largest first.

    A multi-row INSERT ... RETURNING is rendered with one VALUES tuple per row, so every distinct row
    count is a distinct SQL string, and each connection's statement cache (128 entries in sqlite3)
    kept one large prepared statement per count: RSS grew by ~45 MiB over a 100k-request soak. With
    these sizes a table needs at most log2(INSERT_CHUNK) + 1 distinct statements, all reused.
    """
    sizes = [INSERT_CHUNK] * (n // INSERT_CHUNK)
    rest = n % INSERT_CHUNK
    bit = INSERT_CHUNK
    while rest:
        bit //= 2
        if rest >= bit:
            sizes.append(bit)
            rest -= bit
    return sizes


def insert_for(dialect: str) -> Any:
    """The dialect's INSERT construct: both have ON CONFLICT, which the generic one lacks."""
    return sqlite_insert if dialect == "sqlite" else pg_insert


_ROLLUPS = {False: (usage_daily, GROUP_COLUMNS, group_key), True: (usage_daily_user, USER_GROUP_COLUMNS, user_group_key)}


@functools.cache
def _usage_upsert(dialect: str, users: bool) -> Any:
    """Built once per dialect and roll-up: ~80 `col = col + excluded.col` terms cost more to build than a small
    flush."""
    table, keys, _ = _ROLLUPS[users]
    statement = insert_for(dialect)(table)
    sums = {c.name: c + statement.excluded[c.name] for c in table.c if c.name not in keys}
    return statement.on_conflict_do_update(index_elements=list(keys), set_=sums)


@functools.cache
def _request_insert(dialect: str) -> Any:
    # RETURNING names the rows really added (rowcount is unreliable across drivers).
    return (insert_for(dialect)(RequestRow).on_conflict_do_nothing(index_elements=["request_id"])
            .returning(RequestRow.request_id))


def upsert_usage(connection: Connection, records: Sequence[RequestRecord], *, main: bool = True,
                 users: bool = True) -> None:
    """Adds rows to the daily roll-ups (the main one, the end users' one) with `col = col + excluded.col`: atomic
    across replicas."""
    for of_users in [False] * main + [True] * users:
        _, keys, key = _ROLLUPS[of_users]
        groups = aggregate(records, key)
        if groups:
            rows = [dict(zip(keys, k, strict=True)) | totals.as_columns(latency=not of_users)
                    for k, totals in groups.items()]
            connection.execute(_usage_upsert(connection.dialect.name, of_users), rows)  # executemany, cached


def _stored_records(connection: Connection, batch: int) -> Iterator[list[RequestRecord]]:
    """The requests table's rows as records, in batches, read with only the columns it has at the migration that
    calls this (a later migration's column is not there yet: its field keeps the record's default)."""
    present = {c["name"] for c in inspect(connection).get_columns("requests")}
    names = [n for n in RECORD_FIELDS if n in present]
    table = RequestRow.__table__
    result = connection.execute(select(*(table.c[n] for n in names))).mappings()
    while chunk := result.fetchmany(batch):
        yield [RequestRecord(**{n: row[n] for n in names}) for row in chunk]


def backfill_usage(connection: Connection, batch: int = 5000) -> None:
    """Rebuilds the main roll-up from the requests table (the migrations that change its key call this)."""
    connection.execute(usage_daily.delete())
    for records in _stored_records(connection, batch):
        upsert_usage(connection, records, users=False)


def backfill_user_usage(connection: Connection, batch: int = 5000) -> None:
    """Fills the end users' roll-up from the requests table (the migration that adds it calls this)."""
    connection.execute(usage_daily_user.delete())
    for records in _stored_records(connection, batch):
        upsert_usage(connection, records, main=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


PG_CONNECT_TIMEOUT_S = 10
POOL_SIZE, POOL_OVERFLOW = 10, 20


def _pg_connect_args(url: str) -> dict[str, Any]:
    """libpq's connect timeout and TCP keepalives unless the URL sets its own: without them a database host
    that stops answering holds every thread that opens a connection (key lookups, ledger writes) for as long
    as the operating system's TCP timeouts, minutes."""
    query = make_url(url).query
    args: dict[str, Any] = {}
    if "connect_timeout" not in query:
        args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    if "keepalives" not in query:
        args.update(keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
    return args


P = ParamSpec("P")
R = TypeVar("R")


def answered(fn: Callable[P, R]) -> Callable[P, R]:
    """Turns the driver's "no answer" (a database down, unreachable, or locked past its timeout) into
    DatabaseUnavailableError, which callers can tell from a bug: a key lookup or a budget then fails as
    "unavailable, retry" instead of as an internal error with a traceback per request."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except OperationalError as exc:
            raise DatabaseUnavailableError(f"the ledger database did not answer: {exc.orig or exc}") from exc
        except PoolTimeoutError as exc:  # every pooled connection busy past pool_timeout: a slow database, same retry
            raise DatabaseUnavailableError(f"the ledger database had no free connection: {exc}") from exc

    return call


def safe_url(url: str) -> str:
    """The URL with any password masked, for error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "(unparsable URL)"


def missing_sqlite_file(url: str) -> str | None:
    """The SQLite file a URL names, when it does not exist yet (opening the ledger creates it, and its folders,
    empty): commands that only read a ledger say so instead of reading an empty one they made."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[-1]
    return path if path and path != ":memory:" and not Path(path).exists() else None


def absolute_sqlite_url(url: str) -> str:
    """A SQLite URL with a relative path (`sqlite:///ledger.db`) made absolute against the current directory, once,
    when the ledger is opened: journals name their database by its URL, so a relative one named a different file
    from each directory, and a gateway restarted elsewhere replayed another ledger's rows into its own file."""
    try:
        parsed = make_url(url)
    except (SQLAlchemyError, ValueError):
        return url  # reported as unusable by Database
    path = parsed.database
    if (not parsed.drivername.startswith("sqlite") or not path or path == ":memory:" or path.startswith("file:")
            or os.path.isabs(path)):
        return url
    return parsed.set(database=os.path.abspath(path)).render_as_string(hide_password=False)


class Database:
    """One engine per process. SQLite runs in WAL mode so readers never block the writer."""

    def __init__(self, url: str) -> None:
        """LedgerError when the URL cannot be used: unparsable, no driver, a folder that cannot be made."""
        url = absolute_sqlite_url(url)
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        try:
            if self.is_sqlite:
                path = url.split(":///", 1)[-1]
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
                event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW,
                                            pool_timeout=PG_CONNECT_TIMEOUT_S, connect_args=_pg_connect_args(url))
        except (SQLAlchemyError, ValueError, OSError, ImportError) as exc:
            raise LedgerError(f"cannot open the ledger database {safe_url(url)}: {exc}") from exc

    def migrate(self) -> None:
        """Brings the schema to the newest migration (safe to call on every start)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        try:
            with self._migration_lock(), self.engine.begin() as connection:
                if not self.is_sqlite:  # replicas starting together: one migrates, the others wait
                    connection.execute(text("SELECT pg_advisory_xact_lock(7235104501)"))
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except (SQLAlchemyError, OSError) as exc:  # OSError: the SQLite folder's lock file
            raise LedgerError(f"could not migrate the ledger database: {exc}") from exc
        except CommandError as exc:  # a revision this version does not have: a newer draftgate migrated it
            head = ScriptDirectory.from_config(config).get_current_head()
            raise LedgerError(f"could not migrate the ledger database {safe_url(self.url)}: {exc}; this draftgate's "
                              f"newest schema is {head}: the database was migrated by a newer version (run that "
                              f"version, or restore a backup taken before the upgrade)") from exc

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """SQLite runs DDL outside transactions, so processes migrating one file take turns on a lock file."""
        path = self.url.split(":///", 1)[-1] if self.is_sqlite else ""
        if not path or path == ":memory:":
            yield
            return
        with open(f"{path}.migrate-lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Names this database (not its password, which may rotate): journals say which database they are for."""
        url = self.engine.url.set(password=None).render_as_string(hide_password=False)
        return hashlib.sha256(url.encode()).hexdigest()[:16]

    def ping(self) -> bool:
        """True when the database answers."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def insert_records(self, records: Sequence[RequestRecord]) -> int:
        """Inserts rows, skipping request ids already stored (replays are idempotent). Returns rows added."""
        if not records:
            return 0
        records = [fit_columns(r) for r in records]
        added: list[RequestRecord] = []
        # One cached statement, executed many times (SQLAlchemy batches it into multi-row INSERTs).
        statement = _request_insert(self.engine.dialect.name)
        with self.engine.begin() as connection:
            start = 0
            for size in chunk_sizes(len(records)):
                chunk = records[start:start + size]
                start += size
                rows = [{name: getattr(r, name) for name in RECORD_FIELDS} for r in chunk]
                new_ids = {row[0] for row in connection.execute(statement, rows)}
                for record in chunk:
                    if record.request_id in new_ids:
                        new_ids.discard(record.request_id)  # a duplicate inside the batch counts once
                        added.append(record)
            upsert_usage(connection, added)  # same transaction: the roll-up never disagrees with the rows
        return len(added)

    def get_record(self, request_id: str) -> RequestRecord | None:
        table = RequestRow.__table__
        with self.engine.connect() as connection:
            row = connection.execute(select(table).where(table.c.request_id == request_id)).first()
        if row is None:
            return None
        return RequestRecord(**{name: row._mapping[name] for name in RECORD_FIELDS})

    def iter_records(self, *, routes: Sequence[str] | None = None, batch: int = 1000) -> Iterator[RequestRecord]:
        """Every row (optionally of some routes), oldest first, fetched in batches."""
        table = RequestRow.__table__
        statement = select(table).order_by(table.c.created_at)
        if routes:
            statement = statement.where(table.c.route.in_(list(routes)))
        with self.engine.connect() as connection:
            result = connection.execution_options(yield_per=batch).execute(statement)
            for row in result:
                yield RequestRecord(**{name: row._mapping[name] for name in RECORD_FIELDS})

    def count_records(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(RequestRow)).scalar_one())

    def dispose(self) -> None:
        self.engine.dispose()

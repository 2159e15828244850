"""Batched ledger writes off the request path, crash-safe through an append-only journal.

Each record is appended to the current journal segment with one `write()` before it is queued, so a
killed process (kill -9) loses nothing the OS already has. Every flush seals the segment, inserts its
rows in a worker thread and deletes the segment once committed. On start, leftover segments are
replayed; inserts skip request ids already stored, so a crash between commit and delete cannot
double count. Each process must own its journal path (workers get one each); a process holds an
advisory lock on its open segment, so a starting worker replays only segments no live process owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from ledger.db import Database
from ledger.records import RequestRecord

log = logging.getLogger("draftgate.ledger")


@dataclass
class _Segment:
    path: Path
    records: list[RequestRecord] = field(default_factory=list)


HEADER_KEY = "journal_of"  # a segment's first line names the database its rows belong to


def segment_owner(path: Path) -> str | None:
    """The database fingerprint a segment was written for; None for a segment without a header."""
    with path.open("rb") as file:
        first = file.readline()
    try:
        header = orjson.loads(first)
    except orjson.JSONDecodeError:
        return None
    return str(header[HEADER_KEY]) if isinstance(header, dict) and HEADER_KEY in header else None


def read_segment(path: Path) -> list[RequestRecord]:
    """Records in a journal segment; a torn or corrupt line (crash mid-write) is skipped with a warning."""
    records = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip() or (number == 1 and line.startswith(b'{"' + HEADER_KEY.encode())):
            continue
        try:
            data = orjson.loads(line)
            if not isinstance(data, dict):  # valid JSON but no row (`[]`, `0`): `.items()` failed, and with it
                raise TypeError("not an object")  # every start, until someone deleted the segment by hand
            records.append(RequestRecord.from_json_dict(data))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("skipping unreadable journal line %s:%d", path, number)
    return records


REJECTED_FILE = "ledger-rejected.jsonl"


def _row_refused(exc: BaseException) -> bool:
    """A row the database refuses (a value too long, a constraint broken): retrying it cannot help. Anything
    else (a database down, busy, or not migrated) is the database's state: the batch waits in the journal."""
    return isinstance(exc, (DataError, IntegrityError)) and not getattr(exc, "connection_invalidated", False)


class LedgerWriter:
    """Queues records on the event loop; a background task writes them in batches."""

    def __init__(self, db: Database, journal_path: Path, *, batch_size: int = 256,
                 flush_interval_s: float = 0.2, recover_glob: str | None = None) -> None:
        self._db = db
        self._journal = journal_path
        self._recover_glob = recover_glob or journal_path.name + ".*"
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._current: _Segment | None = None
        self._fd: int | None = None
        self._sealed: list[_Segment] = []
        self._seq = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _segments(self, pattern: str) -> list[Path]:
        found = self._journal.parent.glob(pattern)
        return sorted((p for p in found if p.suffix[1:].isdigit()), key=lambda p: (p.stem, int(p.suffix[1:])))

    async def start(self) -> None:
        """Replays orphaned journal segments into the database, then starts the flush task."""
        self._journal.parent.mkdir(parents=True, exist_ok=True)
        for path in self._segments(self._recover_glob):
            await asyncio.to_thread(self._recover, path)
        own = self._segments(self._journal.name + ".*")
        self._seq = int(own[-1].suffix[1:]) + 1 if own else 0
        self._open_segment()
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    def _recover(self, path: Path) -> None:
        """Replays one segment unless a live process holds it (its lock says so)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return
        try:
            owner = segment_owner(path)
            if owner is not None and owner != self._db.fingerprint:  # another database's rows: not ours to
                log.info("leaving journal %s: it belongs to another database", path.name)  # replay here
                return
            records = read_segment(path)
            added = self._insert(records)
            if records:
                log.info("recovered %d journalled ledger row(s) from %s (%d new)", len(records), path.name, added)
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def _insert(self, records: list[RequestRecord]) -> int:
        """Inserts a batch; a row the database refuses (a constraint it breaks) is set aside in
        ledger-rejected.jsonl, with the reason, so that it neither blocks every later row nor stops a restart."""
        try:
            return self._db.insert_records(records)
        except SQLAlchemyError as exc:
            if not _row_refused(exc):
                raise
        added = 0
        for record in records:  # which row? one at a time (rare: only after a refused batch)
            try:
                added += self._db.insert_records([record])
            except SQLAlchemyError as exc:
                if not _row_refused(exc):
                    raise
                self._reject(record, exc)
        return added

    def _reject(self, record: RequestRecord, exc: SQLAlchemyError) -> None:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:500]
        path = self._journal.parent / REJECTED_FILE
        line = orjson.dumps({"reason": reason, "record": orjson.loads(record.to_json())})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line + b"\n")
        finally:
            os.close(fd)
        log.error("the database refused ledger row %s (%s); it is kept in %s", record.request_id, reason, path)

    def _open_segment(self) -> None:
        path = self._journal.with_name(f"{self._journal.name}.{self._seq}")
        self._seq += 1
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while we append to it
        self._current = _Segment(path)

    def record(self, record: RequestRecord) -> None:
        """Journals and queues one row; never blocks on the database."""
        assert self._current is not None and self._fd is not None, "LedgerWriter.start() was not awaited"
        line = record.to_json() + b"\n"
        if not self._current.records:  # a segment's first line says which database it is for (written with the
            # first row, so an unused segment stays empty): gateways on different databases may share a data dir
            line = orjson.dumps({HEADER_KEY: self._db.fingerprint}) + b"\n" + line
        os.write(self._fd, line)
        self._current.records.append(record)
        if len(self._current.records) >= self._batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Rows recorded but not yet committed to the database."""
        current = len(self._current.records) if self._current else 0
        return current + sum(len(s.records) for s in self._sealed)

    def _seal(self) -> None:
        if self._current is None or not self._current.records:
            return
        assert self._fd is not None
        os.close(self._fd)
        self._sealed.append(self._current)
        self._open_segment()

    async def flush(self) -> None:
        """Returns once every row recorded before the call is in the database (raises if it cannot be)."""
        async with self._lock:
            self._seal()
            while self._sealed:
                segment = self._sealed[0]
                await asyncio.to_thread(self._insert, segment.records)
                segment.path.unlink(missing_ok=True)
                self._sealed.pop(0)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("ledger flush failed; %d row(s) kept in the journal for retry", self.pending)
                await asyncio.sleep(min(5.0, self._interval * 10))

    async def close(self) -> None:
        """Flushes everything and stops; a clean close leaves no journal segment behind. With the database down
        it still stops (the rows wait in the journal for the next start): it raised, and the gateway's shutdown
        failed with a traceback, its other connections left open."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except SQLAlchemyError as exc:  # a database down at shutdown: the rows stay in their sealed segments
            log.error("could not write %d ledger row(s) before stopping (%s); they stay in the journal in %s and "
                      "are written at the next start", self.pending, str(getattr(exc, "orig", None) or exc)
                      .strip().splitlines()[0][:300], self._journal.parent)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._current is not None and not self._current.records:
            self._current.path.unlink(missing_ok=True)
        self._current = None

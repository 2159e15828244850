"""A real `draftgate serve` killed with SIGKILL under load, and stopped with SIGTERM mid-request.

The ledger promise: every request whose answer a client fully received is in the ledger exactly once,
with the tokens the client was told, after a restart on the same data dir; a graceful stop finishes the
requests in flight and leaves nothing unflushed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import orjson
import pytest

from ledger import Database, RequestRecord
from ledger.writer import read_segment
from tests.conftest import MASTER_KEY as CONFTEST_MASTER_KEY
from tests.conftest import hosted_config
from tests.support.load import LoadResult, run_load
from tests.support.processes import MASTER_KEY, GatewayProcess, process_config, simulator_process

pytestmark = pytest.mark.slow


def _rows(gw: GatewayProcess) -> dict[str, RequestRecord]:
    db = gw.database()
    try:
        return {r.request_id: r for r in db.iter_records()}
    finally:
        db.dispose()


async def _load_then_kill(gw: GatewayProcess, *, min_completed: int, min_s: float) -> LoadResult:
    """64 clients (a third streaming); SIGKILL once enough answers are in, while the rest are in flight."""
    stop, result = asyncio.Event(), LoadResult()
    load = asyncio.create_task(run_load(gw.url + "/v1", MASTER_KEY, concurrency=64, duration_s=60,
                                        kinds={"hosted_stream": 22}, stop=stop, result=result))
    started = time.monotonic()
    while not load.done() and (time.monotonic() - started < min_s or len(result.completed) < min_completed):
        await asyncio.sleep(0.05)
    answered = len(result.completed)
    while not load.done() and len(result.completed) == answered:
        await asyncio.sleep(0.002)
    gw.kill()  # right after an answer arrived: its row is, at most, a few milliseconds old
    stop.set()
    return await load


def test_kill_9_under_load_loses_no_answered_request_and_counts_none_twice(tmp_path: Path) -> None:
    with simulator_process() as sim:
        config = tmp_path / "draftgate.yaml"
        config.write_text(process_config(sim, timeout_s=60))
        # Rows reach the database every 2 s, so a kill always finds answered rows still only journalled.
        gw = GatewayProcess(config, tmp_path / "data", tmp_path / "gateway.log",
                            env={"DRAFTGATE_LEDGER_FLUSH_INTERVAL_S": "2"})
        try:
            gw.start()
            result = asyncio.run(_load_then_kill(gw, min_completed=80, min_s=2.0))
            completed = {r.request_id: r for r in result.completed}
            assert len(completed) >= 80 and None not in completed
            cut_off = [r for r in result.replies if not r.complete]
            assert cut_off, "the kill should have cut requests off mid-flight"

            # What the kill left: rows in the database, the rest only in the journal
            before = _rows(gw)
            journalled = [rec for seg in gw.journal_segments() for rec in read_segment(seg)]
            assert journalled, "nothing was waiting in the journal: the kill did not test recovery"
            missing_before = set(completed) - set(before)
            assert missing_before <= {rec.request_id for rec in journalled}
            # a kill in the middle of a journal append leaves a torn last line
            with gw.journal_segments()[-1].open("ab") as segment:
                segment.write(b'{"request_id": "torn-by-kill-9", "created_at": "2026-')

            gw.start()  # replays the journal before it reports ready
            assert not [p for p in gw.journal_segments() if p.stat().st_size]  # replayed and removed
            gw.terminate()
        finally:
            gw.stop()

    rows = _rows(gw)
    assert "torn-by-kill-9" not in rows
    lost = [rid for rid in completed if rid not in rows]
    assert not lost, f"{len(lost)} answered request(s) missing from the ledger: {lost[:5]}"
    for rid, reply in completed.items():
        row = rows[rid]
        assert (row.status, row.status_code) == ("ok", 200), (rid, row.status, row.error)
        assert row.stream == reply.kind.endswith("stream")
        assert (row.prompt_tokens, row.completion_tokens) == (reply.prompt_tokens, reply.completion_tokens)
        assert row.hosted_cost_usd and row.hosted_cost_usd > 0 and row.finished_at >= row.created_at
    # nothing invented: every row is a request a client sent (ids are unique: the primary key)
    sent_ids = {r.request_id for r in result.replies if r.request_id}
    assert len(rows) <= len(result.replies)
    assert set(rows) - sent_ids <= {rid for rid, r in rows.items() if r.status != "ok"}
    print(f"\nkill -9: {len(completed)} answered, {len(cut_off)} cut off, {len(missing_before)} answered "
          f"but only in the journal at the kill, {len(rows)} rows after restart")


def _sigterm_during_load(tmp_path: Path, *, delay_s: float, timeout_s: float, requests: int,
                         env: dict[str, str] | None = None) -> tuple:  # type: ignore[type-arg]
    """`requests` hosted requests (half streamed) to an upstream that answers after `delay_s`; SIGTERM 0.8 s in,
    when all of them are waiting on it. Returns (the load's result, seconds from SIGTERM to exit, exit code,
    the moment SIGTERM was sent, the gateway process)."""
    with simulator_process(delay_s=delay_s) as sim:
        config = tmp_path / "draftgate.yaml"
        config.write_text(process_config(sim, timeout_s=timeout_s))
        gw = GatewayProcess(config, tmp_path / "data", tmp_path / "gateway.log", env=env)
        try:
            gw.start()

            async def scenario() -> tuple:  # type: ignore[type-arg]
                load = asyncio.create_task(run_load(gw.url + "/v1", MASTER_KEY, concurrency=requests, duration_s=30,
                                                    kinds={"hosted_stream": requests // 2}, max_requests=requests))
                await asyncio.sleep(0.8)
                sent_term = time.monotonic()
                rc = await asyncio.to_thread(gw.terminate, 30)
                return await load, time.monotonic() - sent_term, rc, sent_term

            result, stop_s, rc, sent_term = asyncio.run(scenario())
        finally:
            gw.stop()
    return result, stop_s, rc, sent_term, gw


def test_sigterm_finishes_in_flight_requests_then_flushes(tmp_path: Path) -> None:
    result, _, rc, sent_term, gw = _sigterm_during_load(tmp_path, delay_s=1.5, timeout_s=30, requests=16)
    # A clean stop is exit 0 (uvicorn re-raised the SIGTERM it had handled: -15, 143 in docker), without a traceback.
    assert rc == 0 and "Traceback" not in gw.log.read_text(), gw.log.read_text()
    assert len(result.replies) == 16 and not result.errors, result.summary()
    assert all(r.finished_s > sent_term for r in result.replies)  # they were in flight at SIGTERM
    rows = _rows(gw)
    assert {r.request_id for r in result.replies} == set(rows)
    assert all(r.status == "ok" for r in rows.values())
    assert sum(r.stream for r in rows.values()) == 8
    assert not gw.journal_segments()  # flushed and removed: nothing left for a replay


def test_sigterm_with_requests_that_outlast_the_shutdown_timeout_cancels_and_records_them(tmp_path: Path) -> None:
    """An upstream that takes longer than `DRAFTGATE_SHUTDOWN_TIMEOUT_S` (an orchestrator's grace period is
    finite: Kubernetes sends SIGKILL after 30 s, which would lose every in-flight row): at the timeout the
    requests still in flight are cancelled, each recorded `cancelled` with its prompt billed, the ledger is
    flushed, and the process exits (it used to wait for them however long they took)."""
    result, stop_s, rc, _, gw = _sigterm_during_load(tmp_path, delay_s=40, timeout_s=60, requests=4,
                                                     env={"DRAFTGATE_SHUTDOWN_TIMEOUT_S": "2"})
    assert rc == 0 and "Traceback" not in gw.log.read_text(), gw.log.read_text()
    assert stop_s < 10, stop_s
    assert len(result.replies) == 4 and not result.completed
    # Each client still waiting was told to retry (a 503 naming the shutdown), not a plain-text 500.
    assert all("server_shutting_down" in (r.error or "") or "503" in (r.error or "") for r in result.replies), \
        [r.error for r in result.replies]
    rows = _rows(gw)
    assert len(rows) == 4 and sum(r.stream for r in rows.values()) == 2, gw.log.read_text()
    for row in rows.values():
        assert (row.status, row.status_code, row.route) == ("cancelled", 499, "hosted"), row
        assert row.prompt_tokens > 0 and row.hosted_cost_usd and row.hosted_cost_usd > 0
        assert "shutting down" in (row.error or ""), row.error
    assert not gw.journal_segments()


def _journalled_or_stored(gw, request_id: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether the row for `request_id` would survive a kill -9 right now."""
    segments = gw.settings.data_dir.glob("ledger-*.journal.*")
    if any(r.request_id == request_id for seg in segments for r in read_segment(seg)):
        return True
    return gw.services.db.get_record(request_id) is not None


async def _drive(gw, body: bytes) -> list[tuple[str, bool]]:  # type: ignore[no-untyped-def]
    """Calls the live app as its server would and notes, at each message sent, whether the row is safe."""
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
             "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
             "headers": [(b"authorization", f"Bearer {CONFTEST_MASTER_KEY}".encode()),
                         (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}
    sent: list[tuple[str, bool]] = []
    request_id = ""
    delivered = False

    async def receive():  # type: ignore[no-untyped-def]
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected

    async def send(message) -> None:  # type: ignore[no-untyped-def]
        nonlocal request_id
        if message["type"] == "http.response.start":
            request_id = dict(message["headers"])[b"x-draftgate-request-id"].decode()
            sent.append(("start", _journalled_or_stored(gw, request_id)))
        elif b"[DONE]" in message.get("body", b""):
            sent.append(("[DONE]", _journalled_or_stored(gw, request_id)))

    await gw.app(scope, receive, send)
    return sent


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_the_row_is_journalled_before_the_client_can_see_a_complete_answer(gateway_factory, simulator,
                                                                           stream: bool) -> None:
    """What the kill -9 guarantee rests on, checked at the exact moment each byte leaves the app."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                         "stream": stream})
    sent = asyncio.run_coroutine_threadsafe(_drive(gw, body), gw.services.loop).result(30)
    complete_at = "[DONE]" if stream else "start"  # a JSON answer is one message after its start
    assert (complete_at, True) in sent, f"the client had the whole answer before its row was safe: {sent}"


def test_workers_log_like_a_single_process(tmp_path: Path) -> None:
    """`serve --workers 2`: the logging set-up was made in the parent only, so each worker's warnings (a model
    without a known price here; journal recovery at INFO was dropped altogether) came out without time, level or
    logger, unlike one process's."""
    config = tmp_path / "draftgate.yaml"
    config.write_text(process_config("http://127.0.0.1:9/v1").replace("gpt-4o-mini", "mystery"))  # unpriced
    gw = GatewayProcess(config, tmp_path / "data", tmp_path / "gateway.log", env={"DRAFTGATE_WORKERS": "2"})
    try:
        gw.start()
        assert gw.terminate() == 0
    finally:
        gw.stop()
    lines = [line for line in gw.log.read_text().splitlines() if "has no known price" in line]
    formatted = [line for line in lines if " WARNING draftgate: model mystery (openai/mystery)" in line
                 and line[:4].isdigit()]
    assert len(lines) >= 2 and formatted == lines, lines  # one per worker, each with time, level and logger


def test_a_relative_sqlite_url_replays_only_into_the_file_it_named_at_the_kill(tmp_path: Path) -> None:
    """`database_url: sqlite:///ledger.db` names a file in the directory serve starts in. Journals said which
    database they were for by that relative URL, so a gateway restarted from another directory replayed the
    killed one's rows into its own, other, ledger."""
    with simulator_process() as sim:
        config = tmp_path / "draftgate.yaml"
        config.write_text(process_config(sim) + "database_url: sqlite:///ledger.db\n")
        first, second = tmp_path / "first", tmp_path / "second"
        first.mkdir()
        second.mkdir()
        data, log = tmp_path / "data", tmp_path / "gateway.log"
        slow_flush = {"DRAFTGATE_LEDGER_FLUSH_INTERVAL_S": "60"}  # the row is still only journalled at the kill
        gw = GatewayProcess(config, data, log, env=slow_flush, cwd=first)
        try:
            gw.start()
            answer = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {MASTER_KEY}"},
                                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
            request_id = answer.headers["x-draftgate-request-id"]
            gw.kill()
            assert [r.request_id for seg in gw.journal_segments() for r in read_segment(seg)] == [request_id]

            elsewhere = GatewayProcess(config, data, log, env=slow_flush, cwd=second).start()
            assert elsewhere.terminate() == 0
            assert _ids(second / "ledger.db") == set()  # not another directory's ledger's row
            assert gw.journal_segments()  # left for the database it was written for

            gw.start()  # from the first directory again: its journal is replayed into its ledger
            assert gw.terminate() == 0
            assert _ids(first / "ledger.db") == {request_id} and not gw.journal_segments()
        finally:
            gw.stop()


def _ids(path: Path) -> set[str]:
    db = Database(f"sqlite:///{path}")
    try:
        return {r.request_id for r in db.iter_records()}
    finally:
        db.dispose()

"""/readyz on a database that stops answering (a network partition, a stuck pooler): a quick 503, not a probe
that hangs and ties up a worker thread per call until the gateway's thread pool is gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import make_url

from tests.conftest import MASTER_KEY, hosted_config
from tests.support.postgres import POSTGRES_URL, fresh_schema
from tests.support.servers import LoopThread

pytestmark = pytest.mark.postgres


class FreezableProxy:
    """A TCP proxy to the database that can stop passing bytes while keeping every connection open."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._passing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._passing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self._server is not None
        self._passing.set()
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def freeze(self, frozen: bool) -> None:
        self._passing.clear() if frozen else self._passing.set()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._passing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        target_reader, target_writer = await asyncio.open_connection(*self._target)
        try:
            await asyncio.gather(self._pump(reader, target_writer), self._pump(target_reader, writer))
        finally:
            self._handlers.discard(task)


@pytest.fixture
def proxied_database() -> Iterator[tuple[str, FreezableProxy, LoopThread]]:
    if not POSTGRES_URL:
        pytest.skip("DRAFTGATE_TEST_POSTGRES_URL is not set (scripts/postgres.sh starts one; CI does)")
    with fresh_schema(POSTGRES_URL) as url:
        parsed = make_url(url)
        loop = LoopThread()
        proxy = FreezableProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
        port = loop.run(proxy.start())
        try:
            yield parsed.set(host="127.0.0.1", port=port).render_as_string(hide_password=False), proxy, loop
        finally:
            loop.run(proxy.stop())
            loop.close()


def test_readyz_answers_503_at_once_when_the_database_stops_answering(gateway_factory, simulator,
                                                                       proxied_database) -> None:
    url, proxy, loop = proxied_database
    gw = gateway_factory(hosted_config(simulator.base_url), database_url=url)
    assert httpx.get(gw.url + "/readyz", timeout=5).status_code == 200
    loop.loop.call_soon_threadsafe(proxy.freeze, True)
    started = time.monotonic()
    for _ in range(8):  # more probes than the default thread pool has threads on a 2-core machine
        ready = httpx.get(gw.url + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
    assert time.monotonic() - started < 8 * 3
    assert httpx.get(gw.url + "/healthz", timeout=5).status_code == 200  # alive: not a reason to restart it
    answer = httpx.post(gw.url + "/v1/chat/completions", timeout=10, headers={"authorization": f"Bearer {MASTER_KEY}"},
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "still here"}]})
    assert answer.status_code == 200  # the ledger journals the row; serving goes on
    loop.loop.call_soon_threadsafe(proxy.freeze, False)
    deadline = time.monotonic() + 15
    while httpx.get(gw.url + "/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "never ready again after the database came back"
        time.sleep(0.2)


def test_a_database_that_is_down_is_a_503_to_retry_not_an_internal_error(gateway_factory, simulator,
                                                                           proxied_database) -> None:
    """Virtual keys, budgets, admin and reports read the database on every request: with it down they were a
    500 `internal_error` (a traceback logged per request) that said nothing of what to do."""
    url, proxy, loop = proxied_database
    gw = gateway_factory(hosted_config(simulator.base_url), database_url=url)
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    key = httpx.post(gw.url + "/admin/keys", json={"name": "app"}, headers=admin, timeout=10).json()["key"]
    loop.run(proxy.stop())  # connections cut, new ones refused
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    for reply in (httpx.post(gw.url + "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {key}"},
                             timeout=30),
                  httpx.get(gw.url + "/admin/keys", headers=admin, timeout=30),
                  httpx.get(gw.url + "/v1/reports/costs", headers=admin, timeout=30)):
        assert reply.status_code == 503, reply.text
        assert reply.json() == {"error": {"message": "the gateway's database is unavailable; retry shortly",
                                          "type": "api_error", "param": None, "code": "database_unavailable"}}
        assert reply.headers["retry-after"] == "5"
    served = httpx.post(gw.url + "/v1/chat/completions", json=chat, headers=admin, timeout=30)
    assert served.status_code == 200  # the master key needs no database: the row is journalled

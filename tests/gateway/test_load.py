"""Bounded load on a real `draftgate serve`: 128 concurrent openai-SDK clients, hosted and local, streamed
and not, for ~25 s on 127.0.0.1. Every answer must be right, memory must stay flat, every request must
land in the ledger. (bench/soak.py runs the same for longer and prints the figures.)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from ledger.writer import read_segment
from tests.support.load import LoadResult, run_load
from tests.support.processes import MASTER_KEY, GatewayProcess, process_config, simulator_process

pytestmark = pytest.mark.slow

CONCURRENCY = 128
KINDS = {"hosted_stream": 36, "local": 4, "local_stream": 4}  # the other 84 clients: hosted, not streamed
WARMUP_S, MEASURED_S = 3.0, 20.0
RSS_GROWTH_LIMIT = 48 * 2**20  # after warm-up; measured growth is a few MiB (docs/reliability.md)


async def _load_with_rss(gw: GatewayProcess, key: str) -> tuple[LoadResult, LoadResult, int, list[int]]:
    warmup = await run_load(gw.url + "/v1", key, concurrency=CONCURRENCY, duration_s=WARMUP_S, kinds=KINDS)
    rss_after_warmup = gw.rss_bytes()
    samples: list[int] = []
    load = asyncio.create_task(run_load(gw.url + "/v1", key, concurrency=CONCURRENCY, duration_s=MEASURED_S,
                                        kinds=KINDS))
    while not load.done():
        samples.append(gw.rss_bytes())
        await asyncio.sleep(0.5)
    samples.append(gw.rss_bytes())
    return warmup, await load, rss_after_warmup, samples


def test_128_clients_mixed_load_no_errors_flat_memory_all_recorded(tmp_path: Path) -> None:
    with simulator_process() as sim:
        config = tmp_path / "draftgate.yaml"
        config.write_text(process_config(sim, local=True, timeout_s=120))
        gw = GatewayProcess(config, tmp_path / "data", tmp_path / "gateway.log")
        try:
            gw.start()
            created = httpx.post(gw.url + "/admin/keys", json={"name": "load", "team": "perf"},
                                 headers={"authorization": f"Bearer {MASTER_KEY}"})
            key = created.json()["key"]  # a virtual key: each request is verified against the database
            started = time.monotonic()
            warmup, measured, rss0, samples = asyncio.run(_load_with_rss(gw, key))
            wall_s = time.monotonic() - started
            rc = gw.terminate()
        finally:
            gw.stop()

    print(f"\nwarm-up: {warmup.summary()}\nmeasured: {measured.summary()}\nRSS after warm-up "
          f"{rss0 / 2**20:.0f} MiB, max {max(samples) / 2**20:.0f} MiB, end {samples[-1] / 2**20:.0f} MiB")
    assert rc == 0, rc  # serve exits 0 on SIGTERM once it has drained and flushed the ledger
    for run in (warmup, measured):
        assert not run.errors, run.summary()
    kinds_served = {r.kind for r in measured.completed}
    assert kinds_served == {"hosted", "hosted_stream", "local", "local_stream"}, measured.summary()
    assert len(measured.completed) >= 200, measured.summary()  # it was load, not a trickle
    assert max(samples) - rss0 <= RSS_GROWTH_LIMIT, [s // 2**20 for s in samples]
    assert wall_s < 120  # bounded: the test stops by itself

    db = gw.database()
    try:
        rows = {r.request_id: r for r in db.iter_records()}
    finally:
        db.dispose()
    replies = warmup.replies + measured.replies
    assert {r.request_id for r in replies} == set(rows)
    assert all(r.status == "ok" and r.team == "perf" for r in rows.values())
    assert {r.route for r in rows.values()} == {"hosted", "local"}
    assert not [rec for seg in gw.journal_segments() for rec in read_segment(seg)]

"""`draftgate serve --workers 2`: metrics add up across workers, every request lands in the ledger once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway.simulator import Simulator
from ledger import Database
from tests.conftest import MASTER_KEY, hosted_config
from tests.gateway.test_serve_defaults import free_port
from tests.support.servers import simulator_server

REQUESTS = 40


def _requests_total(text: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(r'^draftgate_requests_total\{[^}]*\} (\S+)$', text, re.MULTILINE))


def test_two_workers_share_metrics_and_ledger(tmp_path: Path) -> None:
    with simulator_server(Simulator(reply_fn=lambda _b: "fine thanks")) as sim:
        config = tmp_path / "draftgate.yaml"
        config.write_text(hosted_config(sim.base_url))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DRAFTGATE_", "PROMETHEUS_"))}
        env.update(DRAFTGATE_DATA_DIR=str(tmp_path / "data"), DRAFTGATE_TEST_MASTER=MASTER_KEY,
                   DRAFTGATE_TEST_UPSTREAM_KEY="sk-upstream", HF_HUB_OFFLINE="1")
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port",
                                 str(port), "--workers", "2"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        base = f"http://127.0.0.1:{port}"
        auth = {"authorization": f"Bearer {MASTER_KEY}"}
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
            ids = set()
            for i in range(REQUESTS):  # a new connection each time, so both workers take requests
                reply = httpx.post(f"{base}/v1/chat/completions", headers=auth, timeout=30, json={
                    "model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hello {i}"}]})
                assert reply.status_code == 200, reply.text
                ids.add(reply.headers["x-draftgate-request-id"])
            scrapes = [_requests_total(httpx.get(f"{base}/metrics", timeout=5).text) for _ in range(8)]
            assert scrapes == [REQUESTS] * 8  # whichever worker answers, it counts everyone's requests
        finally:
            proc.send_signal(signal.SIGTERM)
            output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, output[-2000:]
    db = Database(f"sqlite:///{tmp_path / 'data' / 'ledger.db'}")
    assert db.count_records() == REQUESTS and all(db.get_record(i) is not None for i in ids)
    db.dispose()
    assert not list((tmp_path / "data").glob("ledger-*.journal.*"))  # every worker flushed on SIGTERM

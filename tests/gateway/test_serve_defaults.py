"""`draftgate serve` with no config at all: the bundled model answers through the openai SDK."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from ledger import Database
from local_engine.loading import BUNDLED

pytestmark = pytest.mark.skipif(not (BUNDLED / "model.safetensors").exists(), reason="bundled checkpoint missing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_on_embedded_defaults_answers_locally_and_drains_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAFTGATE_")}
    env.update(DRAFTGATE_DATA_DIR=str(tmp_path / "data"), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="anything", max_retries=0)
        prompt = [{"role": "user", "content": 'Extract city as JSON: {"name": "Ada", "age": 36, "city": "Oslo"}'}]
        raw = client.chat.completions.with_raw_response.create(model="local/diffusiongemma", messages=prompt, seed=0)
        assert raw.headers["x-draftgate-route"] == "local"
        assert raw.parse().choices[0].message.content == '{"city": "Oslo"}'
        streamed = client.chat.completions.create(model="auto", messages=prompt, stream=True, seed=0)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == '{"city": "Oslo"}'
        request_id = raw.headers["x-draftgate-request-id"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    db = Database(f"sqlite:///{tmp_path / 'data' / 'ledger.db'}")
    row = db.get_record(request_id)  # flushed by the graceful shutdown
    assert row is not None and row.route == "local" and row.device_seconds > 0 and row.local_cost_usd
    answer_ids = AutoTokenizer.from_pretrained(BUNDLED)('{"city": "Oslo"}', add_special_tokens=False)["input_ids"]
    assert row.prompt_tokens > 0 and row.completion_tokens == len(answer_ids) == 6  # {" city ": " Oslo "}
    assert db.count_records() == 2
    assert not list((tmp_path / "data").glob("ledger-*.journal.*"))  # a clean stop leaves no journal

"""Secrets stay secret: provider keys, the master key and virtual keys never reach logs, error bodies,
the ledger database or /metrics; keys are stored hashed and compared in constant time."""

from __future__ import annotations

import ast
import hashlib
import inspect
import sqlite3
import textwrap
from pathlib import Path

import httpx
import openai
import pytest

from gateway import auth
from gateway.simulator import Fault
from tests.conftest import hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db
from tests.support.processes import MASTER_KEY, UPSTREAM_KEY, GatewayProcess, process_config
from tests.support.servers import simulator_server

MSG = [{"role": "user", "content": "hello"}]


def _dump_database(path: Path) -> str:
    """Every value in every table, as text."""
    out = []
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                out.append(f"{table}: {row!r}")
    assert tables and out
    return "\n".join(out)


def _traffic(url: str, sim, seen: list[str]) -> str:  # type: ignore[no-untyped-def]
    """Successes, streams, relayed upstream errors, admin calls; returns a virtual key it created."""
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    created = httpx.post(url + "/admin/keys", json={"name": "app", "team": "t"}, headers=admin)
    virtual = created.json()["key"]
    api = openai.OpenAI(base_url=url + "/v1", api_key=virtual, max_retries=0, timeout=30)
    raw = api.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    seen += [raw.text, str(dict(raw.headers))]
    seen.append("".join(str(c) for c in api.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)))
    masked = "Incorrect API key provided: sk-upstr********************4a. You can find your API key at ..."
    for fault in (Fault(status=401, message=masked), Fault(status=400, message="bad things"),
                  Fault(status=500, message="boom"), Fault(reset=True), Fault(break_stream_after=1)):
        sim.state.faults.append(fault)
        stream = fault.break_stream_after is not None
        try:
            if stream:
                seen.append("".join(str(c) for c in api.chat.completions.create(
                    model="gpt-4o-mini", messages=MSG, stream=True)))
            else:
                api.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        except openai.APIStatusError as exc:
            seen += [exc.response.text, str(dict(exc.response.headers))]
        except openai.APIError as exc:
            seen.append(str(exc.body))
    for path in ("/metrics", "/v1/models", "/admin/keys", "/readyz", "/openapi.json"):
        r = httpx.get(url + path, headers=admin)
        seen += [r.text, str(dict(r.headers))]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "nope", "messages": MSG}, headers=admin)
    seen.append(r.text)
    return virtual  # type: ignore[no-any-return]


def test_keys_never_reach_logs_error_bodies_the_ledger_or_metrics(tmp_path: Path) -> None:
    seen: list[str] = []
    with simulator_server() as sim:
        config = tmp_path / "draftgate.yaml"
        config.write_text(process_config(sim.base_url, timeout_s=5))
        gw = GatewayProcess(config, tmp_path / "data", tmp_path / "gateway.log",
                            env={"DRAFTGATE_LOG_LEVEL": "debug"})  # the chattiest logs, access log included
        try:
            gw.start()
            virtual = _traffic(gw.url, sim, seen)
            gw.terminate()
        finally:
            gw.stop()
        assert sim.state.received[0].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # it was really used
    logs = gw.log.read_text()
    assert "DEBUG" in logs and "/v1/chat/completions" in logs  # debug logging really was on
    ledger = _dump_database(tmp_path / "data" / "ledger.db")
    assert hashlib.sha256(virtual.encode()).hexdigest() in ledger  # stored hashed ...
    for secret in (UPSTREAM_KEY, MASTER_KEY, virtual, virtual[len("sk-dg-") + 4:]):  # ... never in the clear
        assert secret not in logs, "a key is in the gateway's logs"
        assert secret not in ledger, "a key is in the ledger database"
        for text in seen:
            assert secret not in text, f"a key is in a response: {text[:300]}"


def test_an_upstream_that_echoes_the_key_does_not_leak_it(gateway_factory, simulator, caplog) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    secret = "sk-upstream-secret-abc"  # DRAFTGATE_TEST_UPSTREAM_KEY in tests/conftest.py
    caplog.set_level("DEBUG")
    # The alias and its fallback both refuse the key (a 401 goes on to the fallback).
    simulator.state.faults.extend([Fault(status=401, message=f"Incorrect API key provided: {secret}.")] * 2)
    with pytest.raises(openai.AuthenticationError) as info:
        client(gw).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert secret not in info.value.response.text and "Incorrect API key provided" in info.value.response.text
    simulator.state.faults.extend([Fault(status=500, message=f"proxy saw Bearer {secret}")] * 4)
    with pytest.raises(openai.InternalServerError) as info5:
        client(gw).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert secret not in info5.value.response.text
    db = flushed_db(gw)
    assert all(secret not in (r.error or "") + str(r.detail) for r in db.iter_records())
    assert secret not in caplog.text


def test_key_comparisons_are_constant_time() -> None:
    """Static check: every key comparison in gateway/auth.py goes through hmac.compare_digest."""
    source = textwrap.dedent(inspect.getsource(auth))
    tree = ast.parse(source)
    compares = [node for node in ast.walk(tree) if isinstance(node, ast.Compare)
                and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops)]
    secret_words = ("digest", "token", "key", "master", "raw", "hash")
    offending = [ast.unparse(node) for node in compares
                 if any(w in ast.unparse(node).lower() for w in secret_words) and "scheme" not in ast.unparse(node)]
    assert not offending, f"== on key material (use hmac.compare_digest): {offending}"
    calls = [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert calls.count("hmac.compare_digest") >= 2  # master key and static keys

"""Keys, admin endpoints and OpenAI-style errors with the right status codes."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, hosted_config
from tests.gateway.test_chat_hosted import client, flushed_db

MSG = [{"role": "user", "content": "hi"}]


def test_missing_and_wrong_keys_are_401_json(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error" and r.headers["x-draftgate-request-id"]
    with pytest.raises(openai.AuthenticationError):
        client(gw, "sk-wrong").chat.completions.create(model="gpt-4o-mini", messages=MSG)


def test_an_endpoint_draftgate_does_not_serve_says_which_it_does(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    for path in ("/v1/responses", "/v1/audio/speech", "/v1/images/generations"):
        r = httpx.post(gw.url + path, json={"model": "gpt-4o-mini", "input": "hi"},
                       headers={"authorization": f"Bearer {MASTER_KEY}"})
        error = r.json()["error"]
        assert r.status_code == 404 and error["code"] == "not_found"
        assert error["message"].startswith(f"draftgate does not serve POST {path}; its OpenAI API is")


def test_virtual_key_lifecycle_and_team_attribution(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    created = httpx.post(gw.url + "/admin/keys", json={"name": "app-1", "team": "research"}, headers=admin)
    assert created.status_code == 201
    key, key_id = created.json()["key"], created.json()["key_id"]
    assert key.startswith("sk-dg-")
    listed = httpx.get(gw.url + "/admin/keys", headers=admin).json()
    assert [k["key_id"] for k in listed] == [key_id] and "key" not in listed[0]

    raw = client(gw, key).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and (row.team, row.key_id) == ("research", key_id)

    # a team key is not an admin key
    assert httpx.get(gw.url + "/admin/keys", headers={"authorization": f"Bearer {key}"}).status_code == 403
    # revoked keys stop working at once, even with a long cache TTL on this replica
    assert httpx.delete(gw.url + f"/admin/keys/{key_id}", headers=admin).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert httpx.delete(gw.url + "/admin/keys/nope", headers=admin).status_code == 404


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"model": "no-such-model", "messages": MSG}, 404, "model_not_found"),
    ({"model": "gpt-4o-mini", "messages": MSG, "n": 129}, 400, "invalid_value"),
    ({"model": "gpt-4o-mini", "messages": MSG, "bogus_field": 1}, 400, "unknown_parameter"),
    ({"model": "gpt-4o-mini", "messages": []}, 400, "invalid_value"),
    ({"model": "gpt-4o-mini", "messages": MSG, "max_tokens": -5}, 400, "invalid_value"),
    ({"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 10**12}, 400, "invalid_value"),
    ({"model": "gpt-4o-mini", "messages": MSG, "temperature": 9}, 400, "invalid_value"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_value"),
])
def test_bad_requests_are_openai_style_4xx(gateway_factory, simulator, body, status, code) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {MASTER_KEY}"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and "Traceback" not in r.text
    assert set(err) == {"message", "type", "param", "code"}
    assert simulator.state.received == []


def test_a_validators_message_is_given_without_pydantics_prefix(gateway_factory, simulator, tmp_path) -> None:
    """The gateway's own words, as OpenAI's replies have them: "stop: stop takes at most 4 ...", not
    "stop: Value error, stop takes ..."; route explain names the field the same way."""
    import subprocess
    import sys

    gw = gateway_factory(hosted_config(simulator.base_url))
    body = {"model": "gpt-4o-mini", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {MASTER_KEY}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop", r.text
    assert r.json()["error"]["message"] == "stop: stop takes at most 4 non-empty strings of at most 256 characters"
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    (tmp_path / "req.json").write_text(json.dumps({**body, "messages": [{"role": "user", "content": []}]}))
    explained = subprocess.run([sys.executable, "-m", "gateway.cli", "route", "explain", "--config", "draftgate.yaml",
                                "req.json"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert explained.returncode != 0 and "Value error" not in explained.stderr, explained.stderr
    assert "  messages[0].content: content must be a string or a non-empty array" in explained.stderr
    assert "  stop: stop takes at most 4" in explained.stderr


def test_malformed_json_and_oversized_bodies(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url), max_body_bytes=4096)
    headers = {"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
    r = httpx.post(gw.url + "/v1/chat/completions", content=b'{"model": "gpt-4o-mini", "messages": [', headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(gw.url + "/v1/chat/completions", content=b"\xff\xfe\xfa", headers=headers)
    assert r.status_code == 400
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 10_000}]}
    r = httpx.post(gw.url + "/v1/chat/completions", json=big, headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no content-length: the limit is enforced while counting
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'
    r = httpx.post(gw.url + "/v1/chat/completions", content=chunks(), headers=headers)
    assert r.status_code == 413


def test_open_mode_without_master_key(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url, master=False))
    r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG})
    assert r.status_code == 200
    assert httpx.get(gw.url + "/admin/keys").status_code == 403  # admin still needs a master key
    # ... which it does not have: the 403 says how to get one, not only that one is needed
    assert "set `master_key`" in httpx.get(gw.url + "/admin/keys").json()["error"]["message"]


def test_open_mode_refuses_revoked_keys(gateway_factory, simulator, tmp_path) -> None:
    """Open mode serves callers without a key or with one it does not know (apps' placeholder keys), but a key
    an admin revoked is refused: it used to be served anonymously, without the budget it was revoked under."""
    data = tmp_path / "shared-ledger"
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    guarded = gateway_factory(hosted_config(simulator.base_url), data_dir=data)
    live = httpx.post(guarded.url + "/admin/keys", json={"name": "live", "team": "t1"}, headers=admin).json()
    gone = httpx.post(guarded.url + "/admin/keys", json={"name": "gone"}, headers=admin).json()
    assert httpx.delete(guarded.url + f"/admin/keys/{gone['key_id']}", headers=admin).status_code == 200
    guarded.stop()

    gw = gateway_factory(hosted_config(simulator.base_url, master=False), data_dir=data)
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client(gw, gone["key"]).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert client(gw, "sk-placeholder").chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
    raw = client(gw, live["key"]).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    row = flushed_db(gw).get_record(raw.headers["x-draftgate-request-id"])
    assert row is not None and (row.team, row.key_id) == ("t1", live["key_id"])

"""Virtual keys scoped like LiteLLM's: `models` (the aliases a key may request; others are a 403
`model_not_allowed`, and `/v1/models` lists only those) and `duration` (an expired key is a 401)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, hosted_config
from tests.gateway.test_chat_hosted import flushed_db

ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
HI = [{"role": "user", "content": "hi"}]


def as_key(gw, key: str) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_a_key_may_request_only_its_models(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    refused = httpx.post(gw.url + "/admin/keys", json={"name": "x", "models": ["gpt-4o-mini", "gpt-5"]}, headers=ADMIN)
    assert refused.status_code == 400 and "gpt-5" in refused.json()["error"]["message"]
    created = httpx.post(gw.url + "/admin/keys", json={"name": "scoped", "models": ["gpt-4o-mini"]}, headers=ADMIN)
    assert created.status_code == 201 and created.json()["models"] == ["gpt-4o-mini"]
    client = as_key(gw, created.json()["key"])
    assert client.chat.completions.create(model="gpt-4o-mini", messages=HI).choices[0].message.content == "echo: hi"
    for alias in ("backup", "auto"):
        with pytest.raises(openai.PermissionDeniedError) as info:
            client.chat.completions.create(model=alias, messages=HI)
        body = info.value.body
        assert isinstance(body, dict) and (body["code"], body["param"]) == ("model_not_allowed", "model")
        assert "may use: gpt-4o-mini" in info.value.message
        row = flushed_db(gw).get_record(info.value.response.headers["x-draftgate-request-id"])
        assert row is not None and (row.status, row.status_code, row.key_id) == ("error", 403, created.json()["key_id"])
    streamed = httpx.post(gw.url + "/v1/chat/completions", json={"model": "backup", "messages": HI, "stream": True},
                          headers={"authorization": f"Bearer {created.json()['key']}"}, timeout=30)
    assert streamed.status_code == 403
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]
    with pytest.raises(openai.PermissionDeniedError):
        client.models.retrieve("backup")
    assert len(simulator.state.received) == 1  # nothing a key may not use reached an upstream
    unscoped = httpx.post(gw.url + "/admin/keys", json={"name": "all"}, headers=ADMIN).json()
    assert unscoped["models"] is None
    assert {m.id for m in as_key(gw, unscoped["key"]).models.list()} == {"auto", "gpt-4o-mini", "backup"}


def test_an_expired_key_is_refused(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    for bad in ({"duration": "3w"}, {"duration": "9999999d"}, {"models": []}):
        refused = httpx.post(gw.url + "/admin/keys", json={"name": "x", **bad}, headers=ADMIN)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == next(iter(bad)), refused.text
    created = httpx.post(gw.url + "/admin/keys", json={"name": "brief", "duration": "2s"}, headers=ADMIN).json()
    assert created["expires_at"] is not None
    client = as_key(gw, created["key"])
    assert client.chat.completions.create(model="gpt-4o-mini", messages=HI).choices[0].message.content == "echo: hi"
    time.sleep(2.1)
    with pytest.raises(openai.AuthenticationError, match="expired at"):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    listed = {k["key_id"]: k for k in httpx.get(gw.url + "/admin/keys", headers=ADMIN).json()}
    assert listed[created["key_id"]]["expires_at"] == created["expires_at"]


def test_static_keys_take_models_and_check_config_names_an_unknown_one(gateway_factory, simulator, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRAFTGATE_TEST_CI_KEY", "sk-static-ci-0123")
    keys = "keys:\n  - name: ci\n    key: os.environ/DRAFTGATE_TEST_CI_KEY\n    models: [backup]\n"
    gw = gateway_factory(hosted_config(simulator.base_url, keys))
    client = as_key(gw, "sk-static-ci-0123")
    assert client.chat.completions.create(model="backup", messages=HI).choices[0].message.content == "echo: hi"
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    bad = tmp_path / "bad.yaml"
    bad.write_text(hosted_config(simulator.base_url, keys.replace("[backup]", "[backup, gpt-9]")))
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(bad)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if "models: [backup" in text)
    assert f"bad.yaml:{line}: keys[0].models[1]: unknown model alias 'gpt-9'" in result.stderr


def test_a_key_is_updated_in_place_and_the_change_applies_to_its_next_request(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    created = httpx.post(gw.url + "/admin/keys", json={"name": "app", "models": ["gpt-4o-mini"], "rpm_limit": 100},
                         headers=ADMIN).json()
    client = as_key(gw, created["key"])
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="backup", messages=HI)
    url = gw.url + f"/admin/keys/{created['key_id']}"
    changed = httpx.patch(url, json={"models": ["gpt-4o-mini", "backup"], "max_budget_usd": 5}, headers=ADMIN)
    assert changed.status_code == 200, changed.text
    assert changed.json()["models"] == ["gpt-4o-mini", "backup"] and changed.json()["max_budget_usd"] == 5
    assert changed.json()["rpm_limit"] == 100  # left out: kept
    assert client.chat.completions.create(model="backup", messages=HI).choices[0].message.content == "echo: hi"
    cleared = httpx.patch(url, json={"models": None, "max_budget_usd": None, "duration": "1s"}, headers=ADMIN).json()
    assert cleared["models"] is None and cleared["max_budget_usd"] is None and cleared["expires_at"] is not None
    assert {m.id for m in client.models.list()} == {"auto", "gpt-4o-mini", "backup"}
    time.sleep(1.1)
    with pytest.raises(openai.AuthenticationError, match="expired"):
        client.chat.completions.create(model="backup", messages=HI)
    assert httpx.patch(url, json={"duration": None}, headers=ADMIN).json()["expires_at"] is None
    assert client.chat.completions.create(model="backup", messages=HI).choices[0].message.content == "echo: hi"
    for body, status in (({"models": ["gpt-9"]}, 400), ({"name": "x"}, 400), ({"models": []}, 400)):
        assert httpx.patch(url, json=body, headers=ADMIN).status_code == status, body
    assert httpx.patch(gw.url + "/admin/keys/key_nope", json={"rpm_limit": 1}, headers=ADMIN).status_code == 404
    # A budget period on a key without a budget would limit nothing: refused, on creation and update alike.
    for body in ({"budget_period": "day"}, {"budget_period": "day", "max_budget_usd": None}):
        refused = httpx.patch(url, json=body, headers=ADMIN)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "budget_period", body
    alone = httpx.post(gw.url + "/admin/keys", json={"name": "p", "budget_period": "day"}, headers=ADMIN)
    assert alone.status_code == 400 and "needs max_budget_usd" in alone.json()["error"]["message"]
    assert httpx.patch(url, json={"budget_period": "day", "max_budget_usd": 2}, headers=ADMIN).status_code == 200
    assert httpx.patch(url, json={"budget_period": "week"}, headers=ADMIN).json()["budget_period"] == "week"
    team_key = {"authorization": f"Bearer {created['key']}"}
    assert httpx.patch(url, json={"models": None}, headers=team_key).status_code == 403


def test_limits_of_the_wrong_type_or_infinite_are_400s_not_stored(gateway_factory, simulator) -> None:
    """As the config refuses them: `true` was stored as an rpm of 1, `"5"` as $5, and `1e400` as an infinite
    budget that `GET /admin/keys` then showed as no budget (null)."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    key_id = httpx.post(gw.url + "/admin/keys", json={"name": "k", "max_budget_usd": 1}, headers=ADMIN).json()["key_id"]
    headers = {**ADMIN, "content-type": "application/json"}
    for body in ('{"rpm_limit": true}', '{"tpm_limit": "100"}', '{"max_budget_usd": "5"}', '{"rpm_limit": 5.5}',
                 '{"max_budget_usd": 1e400}', '{"max_budget_usd": Infinity}', '{"models": "gpt-4o-mini"}'):
        field = body.split('"')[1]
        created = httpx.post(gw.url + "/admin/keys", content='{"name": "x", ' + body[1:], headers=headers)
        assert created.status_code == 400 and created.json()["error"]["param"] == field, (body, created.text)
        updated = httpx.patch(f"{gw.url}/admin/keys/{key_id}", content=body, headers=headers)
        assert updated.status_code == 400 and updated.json()["error"]["param"] == field, (body, updated.text)
    listed = httpx.get(gw.url + "/admin/keys", headers=ADMIN).json()
    assert [(k["name"], k["max_budget_usd"], k["rpm_limit"], k["tpm_limit"]) for k in listed] == [("k", 1.0, None, None)]
    fine = httpx.patch(f"{gw.url}/admin/keys/{key_id}", json={"max_budget_usd": 2, "rpm_limit": 3}, headers=ADMIN)
    assert fine.status_code == 200 and (fine.json()["max_budget_usd"], fine.json()["rpm_limit"]) == (2.0, 3)


def test_a_nul_character_in_a_name_team_or_key_id_is_a_400_on_every_database(gateway_factory,
                                                                            shared_database_url: str) -> None:
    """PostgreSQL's text cannot hold NUL: a key named or teamed with one, or a key id or team filter with one in
    the URL, was a 500 there (and a name with a NUL stored on SQLite)."""
    gw = gateway_factory(f'master_key: os.environ/DRAFTGATE_TEST_MASTER\ndatabase_url: "{shared_database_url}"\n'
                         "local:\n  enabled: false\n")
    headers = {**ADMIN, "content-type": "application/json"}
    for body, param in (('{"name": "a\\u0000b"}', "name"), ('{"name": "ok", "team": "t\\u0000"}', "team")):
        created = httpx.post(gw.url + "/admin/keys", content=body, headers=headers)
        assert created.status_code == 400 and created.json()["error"]["param"] == param, created.text
    for method, path in (("GET", "/admin/keys?team=%00x"), ("PATCH", "/admin/keys/%00x"), ("DELETE", "/admin/keys/%00x"),
                         ("GET", "/v1/reports/costs?team=%00x")):
        reply = httpx.request(method, gw.url + path, headers=headers, content="{}" if method == "PATCH" else None)
        assert reply.status_code == 400, (method, path, reply.text)
    assert httpx.get(gw.url + "/admin/keys", headers=ADMIN).json() == []


def test_keys_created_at_once_with_one_name_are_one_201_and_409s(gateway_factory, shared_database_url: str) -> None:
    """Concurrent POST /admin/keys with one name all passed the name check and all got a key: now one does, the
    others get a 409 naming it (the database's unique index decides); a config key's name is a 409 too."""
    from concurrent.futures import ThreadPoolExecutor

    gw = gateway_factory(f'master_key: os.environ/DRAFTGATE_TEST_MASTER\ndatabase_url: "{shared_database_url}"\n'
                         "keys:\n  - name: ci-bot\n    key: sk-static-ci-bot-0123\nlocal:\n  enabled: false\n")
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: httpx.post(gw.url + "/admin/keys", json={"name": "app"}, headers=ADMIN,
                                                     timeout=30), range(8)))
    assert sorted(r.status_code for r in replies) == [201] + [409] * 7, [r.text for r in replies]
    winner = next(r.json()["key_id"] for r in replies if r.status_code == 201)
    for refused in (r for r in replies if r.status_code == 409):
        assert refused.json() == {"error": {"message": f"the live key {winner} is already named 'app'",
                                            "type": "invalid_request_error", "param": "name", "code": "conflict"}}
        assert refused.headers["x-should-retry"] == "false"  # the OpenAI SDK retries a 409 unless told not to
    config_twin = httpx.post(gw.url + "/admin/keys", json={"name": "ci-bot"}, headers=ADMIN)
    assert config_twin.status_code == 409 and config_twin.json()["error"]["param"] == "name", config_twin.text
    assert [k["name"] for k in httpx.get(gw.url + "/admin/keys", headers=ADMIN).json()] == ["app"]


def test_a_blank_name_or_team_is_a_400_as_keys_create_refuses_it(gateway_factory, tmp_path: Path) -> None:
    """POST /admin/keys took `"name": "  "` (and such a team), a key that shows as nothing in every list."""
    gw = gateway_factory(f'master_key: os.environ/DRAFTGATE_TEST_MASTER\ndatabase_url: "sqlite:///{tmp_path}/l.db"\n'
                         "local:\n  enabled: false\n")
    for body, param in (({"name": "  "}, "name"), ({"name": "ok", "team": "\t"}, "team")):
        refused = httpx.post(gw.url + "/admin/keys", json=body, headers=ADMIN)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
        assert refused.json()["error"]["message"] == f"{param}: must not be blank"
    assert httpx.get(gw.url + "/admin/keys", headers=ADMIN).json() == []


def test_admin_key_bodies_are_json_whatever_their_content_type(gateway_factory, simulator) -> None:
    """`curl -X POST /admin/keys -d '{"name": ...}'` (curl's form type) was a 400 "the request body must be a JSON
    object" for a JSON object, and the key was not created; a chat body was already read as JSON this way."""
    gw = gateway_factory(hosted_config(simulator.base_url))
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):  # curl -d, and none at all
        headers = {**ADMIN, **({"content-type": content_type} if content_type else {})}
        name = f"curl-{content_type}"
        created = httpx.post(gw.url + "/admin/keys", content=f'{{"name": "{name}", "rpm_limit": 5}}', headers=headers)
        assert created.status_code == 201, (content_type, created.text)
        assert created.json()["name"] == name and created.json()["rpm_limit"] == 5
        changed = httpx.patch(gw.url + f"/admin/keys/{created.json()['key_id']}", content='{"rpm_limit": 7}',
                              headers=headers)
        assert changed.status_code == 200 and changed.json()["rpm_limit"] == 7, (content_type, changed.text)
    form = httpx.post(gw.url + "/dashboard/login", data={"key": MASTER_KEY}, follow_redirects=False)
    assert form.status_code == 303, form.text  # the dashboard's sign-in form is still read as a form

"""Tenant isolation on the admin API, and revocation that takes effect at once on every replica."""

from __future__ import annotations

import os

import httpx
import openai
import pytest

from ledger import Database, KeyStore
from tests.conftest import MASTER_KEY, hosted_config
from tests.gateway.test_chat_hosted import client

MSG = [{"role": "user", "content": "hi"}]
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
STATIC_KEY = "sk-static-team-key-4242"
POSTGRES_URL = os.environ.get("DRAFTGATE_TEST_POSTGRES_URL")


def _new_key(gw, name: str, team: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    r = httpx.post(gw.url + "/admin/keys", json={"name": name, "team": team}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["key_id"]


def _assert_forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "permission_error"


def test_team_keys_cannot_use_the_admin_api_nor_touch_other_keys(gateway_factory, simulator, monkeypatch) -> None:
    monkeypatch.setenv("DRAFTGATE_TEST_STATIC_KEY", STATIC_KEY)
    static = "teams:\n  - name: research\n  - name: ops\nkeys:\n  - name: ci-bot\n" \
             "    key: os.environ/DRAFTGATE_TEST_STATIC_KEY\n    team: research\n"
    gw = gateway_factory(hosted_config(simulator.base_url, static))
    mine, mine_id = _new_key(gw, "app-research", "research")
    theirs, theirs_id = _new_key(gw, "app-ops", "ops")
    for key in (mine, STATIC_KEY):
        auth = {"authorization": f"Bearer {key}"}
        _assert_forbidden(httpx.get(gw.url + "/admin/keys", headers=auth))
        _assert_forbidden(httpx.get(gw.url + "/admin/keys", params={"team": "ops"}, headers=auth))
        _assert_forbidden(httpx.get(gw.url + "/admin/keys", params={"team": "research"}, headers=auth))
        _assert_forbidden(httpx.post(gw.url + "/admin/keys", json={"name": "x", "team": "ops"}, headers=auth))
        _assert_forbidden(httpx.delete(gw.url + f"/admin/keys/{theirs_id}", headers=auth))
        _assert_forbidden(httpx.delete(gw.url + f"/admin/keys/{mine_id}", headers=auth))  # not even its own
    # nothing changed: both keys still work, no key was added
    for key in (mine, theirs):
        assert client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
    listed = httpx.get(gw.url + "/admin/keys", headers=ADMIN).json()
    assert sorted(k["key_id"] for k in listed) == sorted([mine_id, theirs_id])
    assert all(k["revoked_at"] is None for k in listed)


def test_a_virtual_key_names_a_declared_team_and_a_name_of_its_own(gateway_factory, simulator, monkeypatch) -> None:
    """A typo in the team escaped that team's budget; a second key of the same name made `key:` rules ambiguous."""
    monkeypatch.setenv("DRAFTGATE_TEST_STATIC_KEY", STATIC_KEY)
    static = "teams:\n  - name: research\nkeys:\n  - name: ci-bot\n    key: os.environ/DRAFTGATE_TEST_STATIC_KEY\n"
    gw = gateway_factory(hosted_config(simulator.base_url, static))
    # A taken name is a 409 conflict (since migration 0006 made the database hold the rule), a bad team a 400.
    for body, param, words, status in (({"name": "a", "team": "Research"}, "team", "not declared in the config", 400),
                                       ({"name": "ci-bot", "team": "research"}, "name", "a key in the config", 409)):
        refused = httpx.post(gw.url + "/admin/keys", json=body, headers=ADMIN)
        assert refused.status_code == status and refused.json()["error"]["param"] == param
        assert words in refused.json()["error"]["message"]
    _, first = _new_key(gw, "app", "research")
    again = httpx.post(gw.url + "/admin/keys", json={"name": "app", "team": "research"}, headers=ADMIN)
    assert again.status_code == 409 and first in again.json()["error"]["message"]
    assert httpx.delete(gw.url + f"/admin/keys/{first}", headers=ADMIN).status_code in (200, 204)
    _new_key(gw, "app", "research")  # the name is free again once its key is revoked


def test_revocation_is_immediate_on_every_replica(gateway_factory, simulator, tmp_path, shared_database_url) -> None:
    config = hosted_config(simulator.base_url)
    # a long cache TTL on both replicas: revocation must not depend on it
    a = gateway_factory(config, data_dir=tmp_path / "a", database_url=shared_database_url)
    b = gateway_factory(config, data_dir=tmp_path / "b", database_url=shared_database_url)
    key, key_id = _new_key(a, "app-1", "research")
    other, _ = _new_key(a, "app-2", "research")
    for _ in range(3):  # B has verified the key, more than once
        assert client(b, key).chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
    assert httpx.delete(a.url + f"/admin/keys/{key_id}", headers=ADMIN).status_code == 200
    for gw in (b, a):  # the very next request, on the other replica first
        with pytest.raises(openai.AuthenticationError):
            client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=MSG)
        assert httpx.get(gw.url + "/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 401
    assert client(b, other).chat.completions.create(model="gpt-4o-mini", messages=MSG).choices  # others unaffected

    # a revocation made outside any replica (what `draftgate keys revoke` does) is seen at once too
    assert client(a, other).chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
    store_db = Database(shared_database_url)
    try:
        other_id = next(k.key_id for k in KeyStore(store_db).list() if k.name == "app-2")
        KeyStore(store_db).revoke(other_id)
    finally:
        store_db.dispose()
    for gw in (a, b):
        with pytest.raises(openai.AuthenticationError):
            client(gw, other).chat.completions.create(model="gpt-4o-mini", messages=MSG)

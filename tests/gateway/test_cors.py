"""Browser apps call the gateway cross-origin (the OpenAI JS SDK's `dangerouslyAllowBrowser`): vLLM's and LiteLLM's
servers answer CORS for every origin by default, and draftgate answered a preflight with 405, so no browser could."""

from __future__ import annotations

import httpx
import pytest

import policies
from policies import ConfigError
from tests.conftest import MASTER_KEY, hosted_config

PREFLIGHT = {"origin": "https://app.example.com", "access-control-request-method": "POST",
             "access-control-request-headers": "authorization, content-type, x-stainless-os"}
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_a_browser_app_may_call_the_api_from_any_origin_by_default(gateway_factory, simulator) -> None:
    gw = gateway_factory(hosted_config(simulator.base_url))
    pre = httpx.options(gw.url + "/v1/chat/completions", headers=PREFLIGHT)
    assert pre.status_code == 200, pre.text
    assert pre.headers["access-control-allow-origin"] == "*"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in pre.headers  # the dashboard's cookie never goes cross-origin

    r = httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers={
        "origin": "https://app.example.com", "authorization": f"Bearer {MASTER_KEY}"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    assert r.headers["access-control-expose-headers"] == "*"  # a script may read x-draftgate-route and the rest
    assert r.headers["x-draftgate-route"] == "hosted"
    refused = httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers={"origin": "https://app.example.com"})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "*"  # errors readable too
    plain = httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {MASTER_KEY}"})
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers  # no Origin: no CORS


def test_cors_can_be_limited_to_some_origins_or_turned_off(gateway_factory, simulator) -> None:
    limited = gateway_factory(hosted_config(simulator.base_url) + "cors_allow_origins: [https://app.example.com]\n")
    assert httpx.options(limited.url + "/v1/chat/completions", headers=PREFLIGHT).headers[
        "access-control-allow-origin"] == "https://app.example.com"
    other = httpx.options(limited.url + "/v1/chat/completions", headers={**PREFLIGHT, "origin": "https://evil.example"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers

    off = gateway_factory(hosted_config(simulator.base_url) + "cors_allow_origins: []\n")
    assert httpx.options(off.url + "/v1/chat/completions", headers=PREFLIGHT).status_code == 405
    r = httpx.post(off.url + "/v1/chat/completions", json=BODY, headers={
        "origin": "https://app.example.com", "authorization": f"Bearer {MASTER_KEY}"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("origin", ["https://app.example.com/", "app.example.com", "https://app.example.com/v1",
                                    "ftp://files.example.com"])
def test_an_origin_no_browser_sends_is_a_located_config_error(origin: str) -> None:
    with pytest.raises(ConfigError) as info:
        policies.load_text(f"cors_allow_origins:\n  - '*'\n  - {origin}\n", {}, "draftgate.yaml")
    (problem,) = [str(p) for p in info.value.problems]
    assert problem.startswith("draftgate.yaml:3: cors_allow_origins[1]: "), problem
    assert "is not an origin" in problem


def test_an_unexpected_error_is_a_json_500_with_cors_and_the_request_id(gateway_factory, simulator) -> None:
    """A bug's 500 was answered by Starlette's outermost error middleware, outside CORS and the id middleware: a
    browser app could not read it (no access-control-allow-origin), it carried no x-request-id to quote in a
    report, and the server closed the keep-alive connection."""
    gw = gateway_factory(hosted_config(simulator.base_url))

    async def broken() -> None:
        raise RuntimeError("a bug")

    gw.app.add_api_route("/v1/broken", broken, methods=["POST"])
    with httpx.Client() as client:
        r = client.post(gw.url + "/v1/broken", json={}, headers={"origin": "https://app.example.com"})
        assert r.status_code == 500, r.text
        assert r.json()["error"]["code"] == "internal_error" and "a bug" not in r.text
        assert r.headers["access-control-allow-origin"] == "*"
        assert r.headers["x-request-id"] == r.headers["x-draftgate-request-id"] != ""
        assert r.headers.get("connection") != "close"
        after = client.get(gw.url + "/healthz")  # the same connection goes on serving
        assert after.status_code == 200

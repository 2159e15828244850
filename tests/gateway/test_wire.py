"""What proxies, load balancers and clients other than the SDK see on the wire: SSE framing and its headers,
HEAD requests, trailing slashes."""

from __future__ import annotations

import httpx
import orjson
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.conftest import MASTER_KEY
from tests.gateway.test_local_route import local_config

AUTH = {"authorization": f"Bearer {MASTER_KEY}"}
USER = [{"role": "user", "content": "What is 2 + 2?"}]


def _events(reply: httpx.Response) -> list[bytes]:
    """The SSE events of a whole body, each checked to be one `data: ` line closed by a blank line."""
    body = reply.content
    assert body.endswith(b"data: [DONE]\n\n"), body[-200:]  # nothing after [DONE]
    events = body.split(b"\n\n")[:-1]
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events), body
    assert events.count(b"data: [DONE]") == 1
    return [e.removeprefix(b"data: ") for e in events[:-1]]


def test_streams_are_framed_as_sse_and_tell_proxies_not_to_buffer(gateway_factory, simulator,
                                                                  random_checkpoint) -> None:
    """nginx buffers a proxied response unless told `x-accel-buffering: no`: a client behind it got a stream's
    every chunk at once, at its end."""
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    for model in ("local/diffusiongemma", "gpt-4o-mini"):
        for usage in (False, True):
            reply = httpx.post(gw.url + "/v1/chat/completions", headers=AUTH, timeout=30, json={
                "model": model, "messages": USER, "max_tokens": 8, "stream": True,
                "stream_options": {"include_usage": usage}})
            assert reply.status_code == 200, reply.text
            assert reply.headers["content-type"].startswith("text/event-stream")
            assert reply.headers["cache-control"] == "no-cache" and reply.headers["x-accel-buffering"] == "no"
            chunks = [ChatCompletionChunk.model_validate(orjson.loads(e), strict=True) for e in _events(reply)]
            assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
            assert [c for c in chunks if not c.choices] == ([chunks[-1]] if usage else [])
            assert (chunks[-1].usage is not None) == usage


def test_head_is_answered_as_get_without_a_body(gateway_factory, simulator, random_checkpoint) -> None:
    """`curl -I` and uptime monitors check health with HEAD: it was a 405, so the gateway looked down."""
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    with httpx.Client(base_url=gw.url, headers=AUTH, timeout=30) as http:  # one connection: a stray body would
        for path in ("/healthz", "/readyz", "/v1/models", "/v1/models/local/diffusiongemma"):  # break the next
            head, get = http.head(path), http.get(path)
            assert head.status_code == get.status_code == 200, (path, head.status_code)
            assert head.content == b"" and head.headers["content-length"] == get.headers["content-length"]
            assert head.headers["x-request-id"]
        refused = http.head("/v1/chat/completions")  # a POST route: still a 405 saying what it takes
        assert refused.status_code == 405 and refused.headers["allow"] == "POST"
        assert http.get("/healthz").json() == {"status": "ok"}  # the connection is still in step


def test_a_trailing_slash_is_served_not_redirected(gateway_factory, simulator, random_checkpoint) -> None:
    """`POST /v1/chat/completions/` was an empty 307: curl printed nothing, and behind a TLS proxy the redirect
    pointed at http://, where the client's key would go in the clear."""
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    body = {"model": "local/diffusiongemma", "messages": USER, "max_tokens": 8}
    reply = httpx.post(gw.url + "/v1/chat/completions/", headers=AUTH, json=body, timeout=30)
    assert reply.status_code == 200, (reply.status_code, reply.headers.get("location"))
    assert ChatCompletion.model_validate(reply.json(), strict=True).choices[0].finish_reason in ("stop", "length")
    streamed = httpx.post(gw.url + "/v1/chat/completions/", headers=AUTH, json={**body, "stream": True}, timeout=30)
    assert streamed.status_code == 200 and _events(streamed)
    card = httpx.get(gw.url + "/v1/models/local/diffusiongemma/", headers=AUTH, timeout=30)
    assert card.status_code == 200 and card.json()["id"] == "local/diffusiongemma"
    unknown = httpx.post(gw.url + "/v1/responses/", headers=AUTH, json={}, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_a_missing_or_non_object_body_is_a_400_that_says_so(gateway_factory, simulator, random_checkpoint) -> None:
    """curl without `-d` got `body: Field required`, which named no field a client sends."""
    gw = gateway_factory(local_config(simulator.base_url, random_checkpoint))
    for body, words in ((b"", "missing"), (b"null", "JSON object"), (b"[]", "JSON object"), (b'"hi"', "JSON object")):
        reply = httpx.post(gw.url + "/v1/chat/completions", content=body, headers=AUTH, timeout=30)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert words in error["message"] and "`model` and `messages`" in error["message"], (body, error)
        assert error["type"] == "invalid_request_error"
    admin = httpx.post(gw.url + "/admin/keys", headers=AUTH, timeout=30)  # another route's body: no chat fields
    assert admin.status_code == 400 and admin.json()["error"]["message"] == ("the request body is missing: send a "
                                                                            "JSON object"), admin.text

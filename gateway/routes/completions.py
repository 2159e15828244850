"""OpenAI's legacy text completions, served as chat requests through the same pipeline as chat."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from gateway.completions import text_completion, text_completion_events
from gateway.deps import PrincipalDep
from gateway.routes.chat import SSE_HEADERS, unless_disconnected
from gateway.schemas import CompletionRequest
from gateway.services import Services
from router import COMPLETIONS

router = APIRouter()


@router.post("/v1/completions")
@router.post("/completions", include_in_schema=False)
async def completions(body: CompletionRequest, request: Request, principal: PrincipalDep) -> Response:
    """The prompt as one user message, through the chat pipeline (policy, local model, cascades, cache, budgets,
    ledger); the answer as a text_completion, SSE when `stream` is true."""
    services: Services = request.app.state.services  # as chat: no thread hop for a sync dependency
    assert services.pipeline is not None
    chat, headers_out = body.to_chat(), request.state.draftgate_headers
    if chat.stream:
        opened = await unless_disconnected(request, services.pipeline.stream(
            chat, principal, request.state.request_id, headers_out, COMPLETIONS))
        if opened is None:
            return Response(status_code=499)
        events, headers = opened
        return StreamingResponse(text_completion_events(events), media_type="text/event-stream",
                                 headers={**headers, **SSE_HEADERS})
    result = await unless_disconnected(request, services.pipeline.complete(
        chat, principal, request.state.request_id, headers_out, COMPLETIONS))
    if result is None:
        return Response(status_code=499)  # the client left: its row says cancelled
    answer, headers = result
    return Response(orjson.dumps(text_completion(answer)), media_type="application/json", headers=headers)

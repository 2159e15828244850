"""OpenAI's legacy text completions, served as chat requests through the same pipeline as chat."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.completions import text_completion, text_completion_events
from gateway.deps import PrincipalDep
from gateway.routes.chat import served
from gateway.schemas import CompletionRequest
from router import COMPLETIONS

router = APIRouter()


@router.post("/v1/completions")
@router.post("/completions", include_in_schema=False)
async def completions(body: CompletionRequest, request: Request, principal: PrincipalDep) -> Response:
    """The prompt as one user message, through the chat pipeline (policy, local model, cascades, cache, budgets,
    ledger); the answer as a text_completion, SSE when `stream` is true."""
    return await served(body.to_chat(), request, principal, COMPLETIONS, text_completion, text_completion_events)

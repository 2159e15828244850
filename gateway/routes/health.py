"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from gateway.deps import ServicesDep
from gateway.metrics import CONTENT_TYPE_LATEST

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    """The process is up and serving HTTP."""
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz")
async def readyz(services: ServicesDep) -> Response:
    """Ready when the database answers and the local model (if enabled) is loaded."""
    checks = await services.ready()
    ok = all(checks.values())
    body = {"status": "ready" if ok else "not_ready", "checks": checks}
    return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    """Prometheus exposition."""
    services.metrics.ledger_pending.set(services.writer.pending)
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)

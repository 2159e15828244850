"""The app factory: `uvicorn --factory gateway.app:create_app`."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from gateway.errors import install_error_handlers
from gateway.middleware import BodyLimit, CanonicalRequest, DraftgateHeaders
from gateway.routes import admin, chat, completions, dashboard, embeddings, health, reports
from gateway.services import Services
from gateway.settings import Settings
from policies import GatewayConfig


def create_app(settings: Settings | None = None, config: GatewayConfig | None = None) -> FastAPI:
    """Builds a gateway; tests pass their own settings (temp SQLite) and optionally a config object."""
    settings = settings or Settings()
    services = Services.build(settings, config)
    app = FastAPI(title="draftgate", version=_version(), lifespan=services.lifespan, docs_url=None,
                  redoc_url=None)
    app.state.services = services
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(embeddings.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(reports.router)
    app.include_router(dashboard.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(DraftgateHeaders)
    app.add_middleware(CanonicalRequest)  # outside DraftgateHeaders, which reads the path
    if services.config.cors_allow_origins:  # outermost: a preflight is answered before auth, as browsers need
        app.add_middleware(CORSMiddleware, allow_origins=services.config.cors_allow_origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=False, max_age=600,
                           expose_headers=["*"])  # x-request-id, x-draftgate-*, retry-after, x-ratelimit-*
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("draftgate")
    except PackageNotFoundError:
        return "0.0.0"

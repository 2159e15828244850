"""The app factory: `uvicorn --factory gateway.app:create_app`."""

from __future__ import annotations

from fastapi import FastAPI

from gateway.errors import install_error_handlers
from gateway.middleware import BodyLimit, DraftgateHeaders
from gateway.routes import admin, chat, dashboard, health, reports
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
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(reports.router)
    app.include_router(dashboard.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(DraftgateHeaders)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("draftgate")
    except PackageNotFoundError:
        return "0.0.0"

"""The dashboard: a login form, then one server-rendered page. The key lives in an HttpOnly cookie."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.auth import Principal
from gateway.dashboard import collect
from gateway.dashboard_html import dashboard_page, login_page
from gateway.deps import ServicesDep
from gateway.errors import AuthenticationFailed
from gateway.services import Services

router = APIRouter(include_in_schema=False)
COOKIE = "draftgate_key"
SECURITY_HEADERS = {
    # No scripts at all; styles inline; forms only back to us; never framed.
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "cache-control": "no-store",
}


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


async def _principal(services: Services, key: str | None) -> Principal | None:
    """The caller a key names, if it may see a dashboard (master or a team key); None otherwise."""
    if key is None and not services.auth.open_mode:
        return None
    try:
        principal = await services.auth.authenticate({"authorization": f"Bearer {key}"} if key else {})
    except AuthenticationFailed:
        return None
    if principal.is_master or principal.team is not None or services.auth.open_mode:
        return principal
    return None


@router.get("/dashboard")
async def dashboard(request: Request, services: ServicesDep, days: int = 30) -> Response:
    principal = await _principal(services, request.cookies.get(COOKIE))
    if principal is None:
        response = _html(login_page("Your session is no longer valid." if COOKIE in request.cookies else None))
        response.delete_cookie(COOKIE, path="/dashboard")
        return response
    days = min(max(days, 1), 366)
    team = None if principal.is_master or services.auth.open_mode else principal.team
    data = await asyncio.to_thread(collect, services.db, days=days, team=team)
    who = "master key" if principal.is_master else (principal.key_name or "open mode")
    return _html(dashboard_page(data, who, days))


@router.post("/dashboard/login")
async def login(request: Request, services: ServicesDep) -> Response:
    try:
        form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
    except ValueError:  # more fields than the form has: not our form (it was a 500)
        return _html(login_page("That is not the sign-in form: send only the key."), 400)
    key = (form.get("key") or [""])[0].strip()
    principal = await _principal(services, key) if key else None
    if principal is None:
        return _html(login_page("That key cannot open the dashboard: use the master key or a team key."), 401)
    response = RedirectResponse("/dashboard", status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(COOKIE, key, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path="/dashboard", max_age=12 * 3600)
    return response


@router.post("/dashboard/logout")
async def logout() -> Response:
    response = RedirectResponse("/dashboard", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response

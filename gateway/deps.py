"""FastAPI dependencies: the app's services and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.auth import Principal
from gateway.services import Services


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_principal(request: Request) -> Principal:
    services: Services = request.app.state.services
    return await services.auth.authenticate(request.headers)


async def get_master(request: Request) -> Principal:
    services: Services = request.app.state.services
    principal = await services.auth.authenticate(request.headers)
    services.auth.require_master(principal)
    return principal


ServicesDep = Annotated[Services, Depends(get_services)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
MasterDep = Annotated[Principal, Depends(get_master)]

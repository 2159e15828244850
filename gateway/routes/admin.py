"""Admin endpoints (master key only): virtual keys."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gateway.deps import MasterDep, ServicesDep
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.schemas import NO_NUL
from gateway.services import Services, new_key_problem
from ledger import (
    DURATION_PATTERN,
    KeyInfo,
    KeyNameTakenError,
    PeriodWithoutBudgetError,
    UnknownKeyError,
    parse_duration,
)
from ledger.budgets import Limits

router = APIRouter(prefix="/admin")
PERIOD_ALONE = "budget_period needs max_budget_usd: without a budget a period limits nothing"
KeyIdPath = Annotated[str, Path(pattern=NO_NUL)]


def _not_blank(value: str) -> str:
    """A blank name or team shows as nothing in every list (`keys create` refuses it too)."""
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Name = Annotated[str, Field(min_length=1, max_length=128, pattern=NO_NUL), AfterValidator(_not_blank)]


class KeyCreate(BaseModel):
    # Strict, as the config's limits are: `"5"` or `true` for a limit is a mistake, not a number (`true` was an
    # rpm of 1), and an infinite budget (`1e400`) was stored, then shown as no budget at all.
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name
    team: Name | None = None
    max_budget_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    budget_period: Literal["hour", "day", "week", "month", "total"] = "month"
    rpm_limit: int | None = Field(default=None, ge=1, le=10_000_000)
    tpm_limit: int | None = Field(default=None, ge=1, le=10_000_000_000)
    models: list[str] | None = Field(default=None, min_length=1, max_length=1000, description="aliases it may request; "
                                     "omitted: every one")
    duration: str | None = Field(default=None, pattern=DURATION_PATTERN,
                                 description="lifetime, e.g. 30d, 12h, 45m, 90s (LiteLLM's); omitted: no expiry")


class KeyUpdate(BaseModel):
    """The fields to change (LiteLLM's /key/update); a field sent as null clears it (no budget, every
    model, no expiry), a field left out is kept."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_budget_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    budget_period: Literal["hour", "day", "week", "month", "total"] | None = None
    rpm_limit: int | None = Field(default=None, ge=1, le=10_000_000)
    tpm_limit: int | None = Field(default=None, ge=1, le=10_000_000_000)
    models: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    duration: str | None = Field(default=None, pattern=DURATION_PATTERN, description="a new lifetime, from now")


class KeyOut(BaseModel):
    key_id: str
    name: str
    team: str | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    max_budget_usd: float | None = None
    budget_period: str = "month"
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    models: list[str] | None = None
    expires_at: datetime | None = None

    @classmethod
    def of(cls, info: KeyInfo) -> KeyOut:
        limits = info.limits
        return cls(key_id=info.key_id, name=info.name, team=info.team, prefix=info.prefix,
                   created_at=info.created_at, revoked_at=info.revoked_at, max_budget_usd=limits.max_budget_usd,
                   budget_period=limits.budget_period, rpm_limit=limits.rpm_limit, tpm_limit=limits.tpm_limit,
                   models=list(info.models) if info.models is not None else None, expires_at=info.expires_at)


class KeyCreated(KeyOut):
    key: str = Field(description="the secret; shown once, never stored")


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, services: ServicesDep, _master: MasterDep) -> KeyCreated:
    """Creates a virtual key for a team."""
    if "budget_period" in body.model_fields_set and body.max_budget_usd is None:
        raise InvalidRequest(PERIOD_ALONE, param="budget_period")
    limits = Limits(body.max_budget_usd, body.budget_period, body.rpm_limit, body.tpm_limit)
    _check_models(services, body.models)
    problem = new_key_problem(services.config, body.name, body.team)
    if problem is not None:
        raise (Conflict if problem[0] == "name" else InvalidRequest)(problem[1], param=problem[0])
    try:
        raw, info = await asyncio.to_thread(partial(services.keys.create, body.name, body.team, limits,
                                                    models=body.models, expires_at=_expiry(body.duration)))
    except KeyNameTakenError as exc:
        raise Conflict(str(exc), param="name") from None
    return KeyCreated(key=raw, **KeyOut.of(info).model_dump())


@router.patch("/keys/{key_id}")
async def update_key(key_id: KeyIdPath, body: KeyUpdate, services: ServicesDep, _master: MasterDep) -> KeyOut:
    """Changes a key's limits, models or expiry; its secret stays, and every replica applies the change
    on the key's next request."""
    changes = {name: getattr(body, name) for name in body.model_fields_set if name != "duration"}
    _check_models(services, body.models)
    if "duration" in body.model_fields_set:
        changes["expires_at"] = _expiry(body.duration)
    try:
        info = await asyncio.to_thread(services.keys.update, key_id, changes)
    except UnknownKeyError:
        raise NotFound(f"no key with id {key_id}") from None
    except PeriodWithoutBudgetError:
        raise InvalidRequest(f"{PERIOD_ALONE} ({key_id} has no budget)", param="budget_period") from None
    return KeyOut.of(info)


def _check_models(services: Services, models: list[str] | None) -> None:
    unknown = [m for m in models or () if not services.serves(m)]
    if unknown:
        raise InvalidRequest(f"models: unknown model alias(es): {', '.join(unknown)}", param="models")


def _expiry(duration: str | None) -> datetime | None:
    try:
        return datetime.now(UTC) + parse_duration(duration) if duration else None
    except ValueError as exc:
        raise InvalidRequest(f"duration: {exc}", param="duration") from None


@router.get("/keys")
async def list_keys(services: ServicesDep, _master: MasterDep,
                    team: Annotated[str | None, Query(pattern=NO_NUL)] = None) -> list[KeyOut]:
    """Lists keys (never their secrets)."""
    return [KeyOut.of(k) for k in await asyncio.to_thread(services.keys.list, team)]


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: KeyIdPath, services: ServicesDep, _master: MasterDep) -> KeyOut:
    """Revokes a key; it stops working at once on every replica (keys are read from the database on each request)."""
    try:
        info = await asyncio.to_thread(services.keys.revoke, key_id)
    except UnknownKeyError:
        raise NotFound(f"no key with id {key_id}") from None
    return KeyOut.of(info)

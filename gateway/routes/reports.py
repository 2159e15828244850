"""Cost reports over HTTP: the master key sees every team, a team key only its own."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from gateway.auth import Principal
from gateway.deps import PrincipalDep, ServicesDep
from gateway.errors import InvalidRequest, PermissionDenied
from gateway.schemas import NO_NUL
from ledger.reports import GROUP_BY_VALUES, Reporter, ReportQuery, parse_moment

router = APIRouter()
DEFAULT_DAYS = 30
# A plain string (an unknown one is a 400 naming the choices, as every draftgate error is), documented in OpenAPI.
GroupByParam = Annotated[str, Query(description=f"one of {', '.join(GROUP_BY_VALUES)}; model is the alias "
                                    "requested, provider_model the model that answered it, rule the policy rule "
                                    "that routed it ('' for the default route), user the request's `user` (the "
                                    "app's own end user; '' when it named none)")]


# `since=2026-11-01T09:00:00+02:00` typed into a URL as is: its `+` arrives as a space (form encoding), and the
# moment was refused as "neither a date/time". A space can never stand there, so it is read as the `+` it was.
UNENCODED_OFFSET = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")


def report_query(principal: Principal, *, open_mode: bool, group_by: str, since: str | None, until: str | None,
                 team: str | None) -> ReportQuery:
    """Validates the parameters and scopes the query to what the caller may see."""
    if group_by not in GROUP_BY_VALUES:
        raise InvalidRequest(f"group_by must be one of {', '.join(GROUP_BY_VALUES)}", param="group_by")
    now = datetime.now(UTC)
    start, end = now - timedelta(days=DEFAULT_DAYS), None
    for name, text in (("since", since), ("until", until)):
        if text:
            try:
                moment = parse_moment(UNENCODED_OFFSET.sub(r"\1+\2", text), now)
            except ValueError as exc:
                raise InvalidRequest(str(exc), param=name) from None
            start, end = (moment, end) if name == "since" else (start, moment)
    if until and not since and end is not None:  # `until` alone: the DEFAULT_DAYS before it, as the CLI does
        start = end - timedelta(days=DEFAULT_DAYS)
    if end is not None and end <= start:
        raise InvalidRequest("until must be after since", param="until")
    if not (principal.is_master or open_mode):
        if principal.team is None:
            raise PermissionDenied("Reports need the master key or a key that belongs to a team.")
        if team is not None and team != principal.team:
            raise PermissionDenied("A team key can only read its own team's report.")
        team = principal.team
    return ReportQuery(group_by=group_by, since=start, until=end, team=team)  # type: ignore[arg-type]


PARAMETERS = ("group_by", "since", "until", "team")


@router.get("/v1/reports/costs")
async def costs(request: Request, services: ServicesDep, principal: PrincipalDep, group_by: GroupByParam = "team",
                since: str | None = None, until: str | None = None,
                team: Annotated[str | None, Query(pattern=NO_NUL)] = None) -> dict[str, Any]:
    """Requests, tokens, device-hours, dollars and savings vs all-hosted, grouped (default: last 30 days)."""
    # A parameter this report does not take (LiteLLM's start_date/end_date, a typo) was ignored: the client got
    # the default 30 days, unfiltered, as if it were what it asked for.
    unknown = next((name for name in request.query_params if name not in PARAMETERS), None)
    if unknown is not None:
        raise InvalidRequest(f"unknown parameter {unknown!r}: this report takes {', '.join(PARAMETERS)}",
                             param=unknown)
    query = report_query(principal, open_mode=services.auth.open_mode, group_by=group_by, since=since, until=until,
                         team=team)
    report = await asyncio.to_thread(Reporter(services.db).report, query)
    return report.as_dict()

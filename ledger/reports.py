"""Cost reports: who spent what, where, and what routing saved, read from the daily roll-up.

Whole days come from `usage_daily` (one row per day x team x key x requested alias x model that answered x
route x escalation kind x routing rule; `usage_daily_user` for `user`: day x team x key x route x end user);
the partial days at the edges of a `since`/`until` window come from the raw rows, aggregated the same
way, so a report is exact at any boundary and still reads only a few thousand roll-up rows.
Savings = what the same requests would have cost all-hosted (each request's own tokens at the
reference hosted model; hosted requests at what they cost; a response-cache hit what the answer it repeats
would have) minus what they did cost (local device $ + hosted $ + wasted drafts; a hit costs $0). Unpriced rows are counted on their own and never enter the dollar sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import and_, func, or_, select

from ledger.db import Database, answered
from ledger.models import ApiKeyRow, RequestRow, usage_daily, usage_daily_user
from ledger.rollup import (
    GROUP_COLUMNS,
    LATENCY_BUCKETS,
    SCALAR_FIELDS,
    USER_GROUP_COLUMNS,
    UsageTotals,
    aggregate,
    group_key,
    latency_column,
    quantile_ms,
    user_group_key,
)

# "model" is the alias the client asked for (as LiteLLM's model_group); "provider_model" the model that answered
# it (the local one or a hosted provider's; '' for a request refused before any model was tried); "rule" the
# policy rule that routed it ('' when no rule matched: the default route, shown as DEFAULT_RULE_LABEL); "user" the
# request's `user`, the client's own end user (its first END_USER_KEY_CHARS characters; '' when it named none), read
# from the end users' roll-up.
GroupBy = Literal["team", "key", "model", "provider_model", "route", "day", "reason", "rule", "user"]
GROUP_BY_VALUES: tuple[str, ...] = get_args(GroupBy)
_COLUMN = {"team": "team", "key": "key_id", "model": "model_alias", "provider_model": "provider_model",
           "route": "route", "day": "day", "reason": "reason", "rule": "rule", "user": "end_user"}
ROUTES = ("local", "hosted", "escalated", "cache")  # "cache": answered by the response cache, at $0
DEFAULT_RULE_LABEL = "(default)"  # as `draftgate route explain` names the route taken when no rule matches
# What the roll-up needs from a raw row (not the JSON detail, errors or prompts).
RAW_FIELDS = ("request_id", "created_at", "team", "key_id", "model_alias", "provider_model", "route",
              "escalation_reason", "rule", "end_user", "status", "prompt_tokens", "completion_tokens", "latency_ms",
              "device_seconds", "unpriced", "local_cost_usd", "hosted_cost_usd", "wasted_draft_usd", "reference_cost_usd")


@dataclass(frozen=True)
class ReportQuery:
    """A window [since, until) in UTC, a grouping, and optional team/key filters."""

    group_by: GroupBy = "team"
    since: datetime | None = None
    until: datetime | None = None
    team: str | None = None
    key_id: str | None = None


@dataclass
class ReportRow:
    """One group's figures."""

    group: str
    label: str
    totals: UsageTotals = field(default_factory=UsageTotals)
    by_route: dict[str, UsageTotals] = field(default_factory=dict)  # the routes its requests took

    def add(self, route: str, totals: UsageTotals) -> None:
        self.totals.merge(totals)
        self.by_route.setdefault(route, UsageTotals()).merge(totals)

    def requests_on(self, route: str) -> int:
        return self.by_route[route].requests if route in self.by_route else 0

    def cost_on(self, route: str) -> float:
        """Dollars spent by this group's requests that took `route`."""
        t = self.by_route.get(route)
        return 0.0 if t is None else t.local_usd + t.hosted_usd + t.wasted_usd

    def as_dict(self) -> dict[str, Any]:
        t = self.totals
        cost = t.local_usd + t.hosted_usd + t.wasted_usd
        # Shares of the requests that got a route: one refused before routing ("none") was served nowhere.
        routed = sum(self.requests_on(r) for r in ROUTES)
        served = max(1, routed)
        return {
            "group": self.group, "label": self.label, "requests": t.requests, "errors": t.errors,
            "local_requests": self.requests_on("local"), "hosted_requests": self.requests_on("hosted"),
            "escalated_requests": self.requests_on("escalated"), "cache_requests": self.requests_on("cache"),
            "local_share": self.requests_on("local") / served if routed else 0.0,
            "escalation_rate": self.requests_on("escalated") / served if routed else 0.0,
            "prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
            "device_hours": t.device_seconds / 3600, "local_usd": t.local_usd, "hosted_usd": t.hosted_usd,
            # savings compare like with like: the spend of the requests that have an all-hosted counterfactual
            "wasted_draft_usd": t.wasted_usd, "cost_usd": cost, "all_hosted_usd": t.reference_usd,
            "savings_usd": t.reference_usd - (cost - t.unreferenced_usd), "unpriced_requests": t.unpriced,
            "unreferenced_requests": t.unreferenced,
            "p50_latency_ms": quantile_ms(t.latency, 0.50), "p99_latency_ms": quantile_ms(t.latency, 0.99),
        }


@dataclass
class Report:
    query: ReportQuery
    rows: list[ReportRow]
    total: ReportRow

    def as_dict(self) -> dict[str, Any]:
        q = self.query
        return {"object": "report", "group_by": q.group_by,
                "since": q.since.isoformat() if q.since else None,
                "until": q.until.isoformat() if q.until else None, "team": q.team,
                "rows": [r.as_dict() for r in self.rows], "total": self.total.as_dict()}


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()


def _midnight(moment: datetime, *, up: bool) -> datetime:
    """The UTC midnight at or after (`up`) / at or before `moment`."""
    moment = moment.astimezone(UTC)
    floor = datetime.combine(moment.date(), time(0), tzinfo=UTC)
    return floor + timedelta(days=1) if up and floor < moment else floor


class Reporter:
    """Builds reports from one ledger database (synchronous: call it from a worker thread)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @answered
    def report(self, query: ReportQuery) -> Report:
        rows: dict[str, ReportRow] = {}
        whole_from = _midnight(query.since, up=True) if query.since else None
        whole_to = _midnight(query.until, up=False) if query.until else None
        if query.since and query.until and whole_from and whole_to and whole_to < whole_from:
            self._fold_raw(query, query.since, query.until, rows)  # the window lies inside one day
        else:
            self._fold_rollup(query, whole_from, whole_to, rows)
            if query.since is not None and whole_from is not None and query.since < whole_from:
                self._fold_raw(query, query.since, whole_from, rows)
            if query.until is not None and whole_to is not None and whole_to < query.until:
                self._fold_raw(query, whole_to, query.until, rows)
        labels = self._labels(query.group_by, rows)
        for row in rows.values():
            row.label = labels.get(row.group, row.group)
        ordered = sorted(rows.values(), key=lambda r: r.group if query.group_by == "day" else
                         (-(r.totals.local_usd + r.totals.hosted_usd + r.totals.wasted_usd), r.group))
        total = ReportRow(group="total", label="total")
        for row in ordered:
            for route, totals in row.by_route.items():
                total.add(route, totals)
        return Report(query, ordered, total)

    def _fold_rollup(self, query: ReportQuery, since: datetime | None, until: datetime | None,
                     rows: dict[str, ReportRow]) -> None:
        table = usage_daily_user if query.group_by == "user" else usage_daily
        group_col = table.c[_COLUMN[query.group_by]]
        sums = [func.sum(table.c[name]).label(name) for name in SCALAR_FIELDS]
        if table is usage_daily:  # the end users' roll-up keeps no latency histogram
            sums += [func.sum(table.c[latency_column(i)]).label(latency_column(i)) for i in range(LATENCY_BUCKETS)]
        statement = select(group_col.label("grp"), table.c.route, *sums).group_by(group_col, table.c.route)
        conditions = []
        if since is not None:
            conditions.append(table.c.day >= _day(since))
        if until is not None:
            conditions.append(table.c.day < _day(until))
        if query.team is not None:
            conditions.append(table.c.team == query.team)
        if query.key_id is not None:
            conditions.append(table.c.key_id == query.key_id)
        if conditions:
            statement = statement.where(and_(*conditions))
        with self._db.engine.connect() as connection:
            for row in connection.execute(statement).mappings():
                group = row["grp"] or ""
                rows.setdefault(group, ReportRow(group, group)).add(
                    row["route"], UsageTotals.from_columns(row, latency=table is usage_daily))

    def _fold_raw(self, query: ReportQuery, since: datetime, until: datetime, rows: dict[str, ReportRow]) -> None:
        if until <= since:
            return
        table = RequestRow.__table__
        statement = select(*(table.c[name] for name in RAW_FIELDS)).where(
            table.c.created_at >= since, table.c.created_at < until)
        # The roll-up keeps a row without a team (or key) under '': a filter on '' means those rows here too.
        for column, value in ((table.c.team, query.team), (table.c.key_id, query.key_id)):
            if value is not None:
                statement = statement.where(or_(column == value, column.is_(None)) if value == "" else column == value)
        with self._db.engine.connect() as connection:
            # Rows go straight into the aggregation (they have the attributes it reads): building a
            # record object per row would double the cost of the edge days.
            records = connection.execute(statement).all()
        columns, keyed = (USER_GROUP_COLUMNS, user_group_key) if query.group_by == "user" else (GROUP_COLUMNS, group_key)
        index, route_index = columns.index(_COLUMN[query.group_by]), columns.index("route")
        for key, totals in aggregate(records, keyed).items():
            if query.group_by == "user":  # as the end users' roll-up has none: no percentiles from the edges alone
                totals.latency = [0] * LATENCY_BUCKETS
            rows.setdefault(key[index], ReportRow(key[index], key[index])).add(key[route_index], totals)

    def _labels(self, group_by: str, rows: dict[str, ReportRow]) -> dict[str, str]:
        """Readable names: key names for key ids, '(none)' for requests without a team, key or user, '(default)' for
        requests no rule routed."""
        groups = list(rows)
        labels = {g: g for g in groups}
        if group_by in ("team", "key", "provider_model", "reason", "user"):
            labels.update({g: "(none)" for g in groups if g == ""})
        if group_by == "rule" and "" in labels:
            labels[""] = DEFAULT_RULE_LABEL
        if group_by == "key":
            with self._db.engine.connect() as connection:
                names = dict(connection.execute(select(ApiKeyRow.key_id, ApiKeyRow.name)).all())
            for g in groups:
                if g in names:
                    labels[g] = f"{names[g]} ({g})"
                elif g.startswith("config:"):
                    labels[g] = g.removeprefix("config:") + " (config)"
        return labels


def escalation_reasons(db: Database, query: ReportQuery) -> list[tuple[str, int]]:
    """Escalated (or unverified-draft) requests by kind of reason, most frequent first."""
    report = Reporter(db).report(ReportQuery("reason", query.since, query.until, query.team, query.key_id))
    return sorted(((r.group, r.totals.requests) for r in report.rows if r.group), key=lambda item: (-item[1], item[0]))




# A report's window is widened to whole days and reaches back 30 days from a lone `until`: moments within a
# year of datetime's limits would overflow there (a 500 from the API, a traceback from the CLI).
EARLIEST = datetime(2, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """`2026-11-01`, `2026-11-01T12:00:00+00:00`, or a span back from now: `30d`, `12h`, `90m`, `2w`.

    Raises ValueError with a message fit for the user, also for a moment outside [EARLIEST, LATEST].
    """
    now = now or datetime.now(UTC)
    value = text.strip()
    units = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
    try:
        if len(value) >= 2 and value[-1] in units and value[:-1].isascii() and value[:-1].isdigit():
            moment = now - int(value[:-1]) * units[value[-1]]
        else:
            moment = datetime.fromisoformat(value)  # Python 3.11+ reads a trailing "Z" as UTC
            moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        if not EARLIEST <= moment <= LATEST:
            raise OverflowError
        return moment
    except OverflowError:
        raise ValueError(f"{text!r} is outside the dates this report can handle") from None
    except ValueError:
        raise ValueError(f"{text!r} is neither a date/time (2026-11-01, 2026-11-01T12:00Z) "
                         "nor a span like 30d, 12h, 2w") from None

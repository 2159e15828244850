"""The dashboard page: server-rendered HTML with inline SVG charts, no scripts, nothing from a CDN.

Figures come from the same `Reporter` as `/v1/reports/costs` and `draftgate report`, so the three
can never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from html import escape
from typing import Any

from gateway.report_render import amount
from ledger import Database
from ledger.reports import ROUTES, Reporter, ReportQuery, escalation_reasons

COLORS = {"local": "#2e9d5b", "hosted": "#3b6fd4", "escalated": "#e08a1e", "cache": "#8a63d2"}
SPEND_ROUTES = tuple(r for r in ROUTES if r != "cache")  # a cache hit costs $0: no bar, no legend entry


@dataclass
class DayFigures:
    day: str
    cost_by_route: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ROUTES, 0.0))
    all_hosted_usd: float = 0.0
    local_share: float | None = None


@dataclass
class DashboardData:
    since: datetime
    until: datetime
    team: str | None
    total: dict[str, Any]
    days: list[DayFigures]
    reasons: list[tuple[str, int]]
    top_keys: list[dict[str, Any]]
    top_models: list[dict[str, Any]]  # by the alias requested
    top_provider_models: list[dict[str, Any]]  # by the model that answered (local or a hosted provider's)
    teams: list[dict[str, Any]]


def collect(db: Database, *, days: int, team: str | None, now: datetime | None = None) -> DashboardData:
    """Everything the page shows, for the last `days` whole UTC days up to now (synchronous)."""
    now = now or datetime.now(UTC)
    until = now
    since = datetime.combine(now.date() - timedelta(days=days - 1), datetime.min.time(), tzinfo=UTC)
    reporter = Reporter(db)
    base = ReportQuery("day", since, until, team)
    by_day = {d: DayFigures(d) for d in _days(since.date(), now.date())}
    overall = reporter.report(base)
    for row in overall.rows:
        figures = by_day.setdefault(row.group, DayFigures(row.group))
        data = row.as_dict()
        figures.all_hosted_usd = data["all_hosted_usd"]
        figures.local_share = data["local_share"] if data["requests"] else None
        figures.cost_by_route = {route: row.cost_on(route) for route in ROUTES}
    return DashboardData(
        since=since, until=until, team=team, total=overall.total.as_dict(),
        days=[by_day[d] for d in sorted(by_day)], reasons=escalation_reasons(db, base),
        top_keys=[r.as_dict() for r in reporter.report(ReportQuery("key", since, until, team)).rows[:10]],
        top_models=[r.as_dict() for r in reporter.report(ReportQuery("model", since, until, team)).rows[:10]],
        top_provider_models=[r.as_dict() for r in
                             reporter.report(ReportQuery("provider_model", since, until, team)).rows[:10]],
        teams=[] if team else [r.as_dict() for r in reporter.report(ReportQuery("team", since, until)).rows[:10]])


def _days(first: date, last: date) -> list[str]:
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def money(value: float | None) -> str:
    if value is None:
        return "-"
    return ("-" if value < 0 else "") + "$" + amount(abs(value))


def _nice_max(value: float) -> float:
    """A round axis maximum at or above `value` (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    return float(next(step * magnitude for step in (1, 2, 2.5, 5, 10) if step * magnitude >= value * (1 - 1e-12)))


def spend_chart(days: list[DayFigures], width: int = 920, height: int = 280) -> str:
    """Daily spend stacked by route, with what all-hosted would have cost as a dashed line."""
    left, right, top, bottom = 64, 16, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([sum(d.cost_by_route.values()) for d in days] + [d.all_hosted_usd for d in days] + [0.0])
    y_max = _nice_max(peak)
    slot = plot_w / max(1, len(days))
    bar_w = max(2.0, slot * 0.7)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="spend-chart" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="daily spend by route">']
    for i in range(5):
        value = y_max * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ea"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
                     f'{money(value) if y_max < 0.1 else f"${value:,.2f}"}</text>')
    line: list[str] = []
    for index, figures in enumerate(days):
        x = left + index * slot + (slot - bar_w) / 2
        y = top + plot_h
        for route in SPEND_ROUTES:
            usd = figures.cost_by_route[route]
            h = plot_h * usd / y_max
            if h > 0:
                y -= h
                parts.append(f'<rect class="bar" data-day="{figures.day}" data-route="{route}" data-usd="{usd:.8f}" '
                             f'x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{COLORS[route]}">'
                             f'<title>{figures.day} {route}: {money(usd)}</title></rect>')
        line.append(f"{x + bar_w / 2:.1f},{top + plot_h - plot_h * figures.all_hosted_usd / y_max:.1f}")
        if len(days) <= 16 or index % max(1, len(days) // 8) == 0:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                         f'font-size="11">{figures.day[5:]}</text>')
    if line:
        parts.append(f'<polyline id="all-hosted-line" points="{" ".join(line)}" fill="none" stroke="#b3261e" '
                     'stroke-width="2" stroke-dasharray="6 4"/>')
    legend = [(COLORS[r], r) for r in SPEND_ROUTES] + [("#b3261e", "all-hosted would have cost")]
    for i, (color, label) in enumerate(legend):
        x = left + i * 150
        parts.append(f'<rect x="{x}" y="{height - 14}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{x + 14}" y="{height - 5}" font-size="11">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def share_chart(days: list[DayFigures], width: int = 920, height: int = 160) -> str:
    """Share of requests served locally, per day."""
    left, right, top, bottom = 64, 16, 12, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    slot = plot_w / max(1, len(days))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="share-chart" viewBox="0 0 {width} {height}" role="img" '
             'aria-label="share served locally">']
    for pct in (0, 50, 100):
        y = top + plot_h - plot_h * pct / 100
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ea"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{pct}%</text>')
    points = [(left + i * slot + slot / 2, d.local_share) for i, d in enumerate(days) if d.local_share is not None]
    if points:
        coords = " ".join(f"{x:.1f},{top + plot_h - plot_h * share:.1f}" for x, share in points)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{COLORS["local"]}" stroke-width="2"/>')
    parts.append("</svg>")
    return "".join(parts)

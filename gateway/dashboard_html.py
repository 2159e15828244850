"""HTML for the dashboard and its login form (every dynamic value escaped)."""

from __future__ import annotations

from html import escape
from typing import Any

from gateway.dashboard import COLORS, DashboardData, money, share_chart, spend_chart
from gateway.report_render import amount

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2125}
header{background:#1d2125;color:#fff;padding:12px 24px;display:flex;justify-content:space-between;align-items:center}
header a,header button{color:#fff;background:none;border:1px solid #fff6;border-radius:4px;padding:4px 10px;
 text-decoration:none;font-size:13px;cursor:pointer;margin-left:6px}
main{padding:16px 24px;max-width:1100px;margin:auto}
.kpis{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin-bottom:16px}
.kpi{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px #0001}
.kpi .v{font-size:22px;font-weight:600}.kpi .l{font-size:12px;color:#5e6c84}
section{background:#fff;border-radius:8px;padding:12px 16px;margin-bottom:16px;box-shadow:0 1px 2px #0001}
h2{font-size:15px;margin:4px 0 10px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}tr:nth-child(even){background:#f6f7f9}
.reason-bar{height:14px;background:#e08a1e;border-radius:3px}.two{display:grid;grid-template-columns:1fr 1fr;gap:16px}
form.login{max-width:380px;margin:80px auto;background:#fff;padding:24px;border-radius:8px;box-shadow:0 1px 3px #0002}
form.login input{width:100%;padding:8px;margin:8px 0 12px;box-sizing:border-box}.err{color:#b3261e}
"""


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f"<body>{body}</body></html>")


def login_page(error: str | None = None) -> str:
    message = f'<p class="err" id="login-error">{escape(error)}</p>' if error else ""
    return _page("draftgate: sign in", (
        '<form class="login" method="post" action="/dashboard/login"><h2>draftgate dashboard</h2>'
        "<p>Sign in with the master key or a team key. It is kept in an HttpOnly cookie, never in the URL.</p>"
        f'{message}<label for="key">API key</label><input id="key" name="key" type="password" '
        'autocomplete="current-password" required><button type="submit" id="login">Sign in</button></form>'))


def _kpi(ident: str, label: str, value: str) -> str:
    return f'<div class="kpi"><div class="v" id="kpi-{ident}">{escape(value)}</div><div class="l">{label}</div></div>'


def _spent(row: dict[str, Any]) -> tuple[str, str]:
    """(total $, savings $) cells: a group's unpriced requests are named, never shown as $0 (they are in no sum)."""
    unpriced = row["unpriced_requests"]
    if unpriced and unpriced == row["requests"]:
        return "unpriced", "-"
    cost = money(row["cost_usd"]) + (f" + {unpriced:,} unpriced" if unpriced else "")
    return cost, money(row["savings_usd"])


def _table(ident: str, title: str, rows: list[dict[str, Any]]) -> str:
    head = ("<tr><th>" + escape(title) + "</th><th>requests</th><th>local %</th><th>total $</th>"
            "<th>savings $</th><th>device h</th></tr>")
    body = "".join(
        f"<tr><td>{escape(r['label'])}</td><td>{r['requests']:,}</td><td>{r['local_share']:.0%}</td>"
        + "".join(f"<td>{escape(cell)}</td>" for cell in _spent(r)) + f"<td>{amount(r['device_hours'])}</td></tr>"
        for r in rows) or '<tr><td colspan="6">no requests</td></tr>'
    return f'<table id="{ident}">{head}{body}</table>'


def _reasons(reasons: list[tuple[str, int]]) -> str:
    if not reasons:
        return "<p>No escalations in this window.</p>"
    peak = max(count for _, count in reasons)
    rows = "".join(f'<tr><td>{escape(kind)}</td><td style="width:60%"><div class="reason-bar" '
                   f'style="width:{100 * count / peak:.0f}%"></div></td><td>{count:,}</td></tr>'
                   for kind, count in reasons)
    return f'<table id="reasons">{rows}</table>'


def dashboard_page(data: DashboardData, who: str, days: int) -> str:
    t = data.total
    saved_pct = f" ({t['savings_usd'] / t['all_hosted_usd']:.0%})" if t["all_hosted_usd"] > 0 else ""
    kpis = "".join([
        _kpi("spend", "spent (local + hosted + wasted drafts)", money(t["cost_usd"])),
        _kpi("all-hosted", "all-hosted would have cost", money(t["all_hosted_usd"])),
        _kpi("savings", "saved by routing and caching" + escape(saved_pct), money(t["savings_usd"])),
        _kpi("local-share", "served locally", f"{t['local_share']:.0%}"),
        _kpi("requests", f"requests ({t['cache_requests']:,} from the response cache)" if t["cache_requests"]
             else "requests", f"{t['requests']:,}"),
        _kpi("escalation-rate", "escalated (of routed requests)", f"{t['escalation_rate']:.0%}"),
        _kpi("device-hours", "local device-hours", amount(t["device_hours"])),
        _kpi("unpriced", "unpriced requests (not in $)", f"{t['unpriced_requests']:,}"),
    ])
    windows = "".join(f'<a href="/dashboard?days={d}">{d}d</a>' for d in (7, 30, 90))
    scope = f"team {data.team}" if data.team else "all teams"
    teams = "" if data.team else f"<section><h2>Teams</h2>{_table('top-teams', 'team', data.teams)}</section>"
    body = (
        f'<header><div><b>draftgate</b> &middot; {escape(scope)} &middot; last {days} days '
        f'({data.since:%Y-%m-%d} to {data.until:%Y-%m-%d %H:%M} UTC) &middot; signed in as {escape(who)}</div>'
        f'<div>{windows}<form method="post" action="/dashboard/logout" style="display:inline">'
        '<button type="submit">Sign out</button></form></div></header><main>'
        f'<div class="kpis">{kpis}</div>'
        f"<section><h2>Daily spend by route</h2>{spend_chart(data.days)}</section>"
        f"<section><h2>Share served locally</h2>{share_chart(data.days)}</section>"
        f"<section><h2>Escalation reasons</h2>{_reasons(data.reasons)}</section>"
        '<div class="two"><section><h2>Top models requested</h2>'
        f"{_table('top-models', 'alias', data.top_models)}</section><section><h2>Top models that answered</h2>"
        f"{_table('top-provider-models', 'model', data.top_provider_models)}</section></div>"
        f"<section><h2>Top keys</h2>{_table('top-keys', 'key', data.top_keys)}</section>{teams}"
        f'<p style="font-size:12px;color:#5e6c84">Wasted drafts: {money(t["wasted_draft_usd"])}. '
        f'Colors: <span style="color:{COLORS["local"]}">local</span>, '
        f'<span style="color:{COLORS["hosted"]}">hosted</span>, '
        f'<span style="color:{COLORS["escalated"]}">escalated</span>. Same figures as '
        "<code>GET /v1/reports/costs</code> and <code>draftgate report</code>.</p></main>")
    return _page("draftgate dashboard", body)

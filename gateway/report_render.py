"""Renders cost reports for the terminal (rich), for spreadsheets (CSV) and for programs (JSON)."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import orjson
from rich.table import Table
from rich.text import Text

from ledger.reports import Report

SMALL = "small"  # an amount shown with its first two significant digits when under 0.01, never as 0.0000

COLUMNS = [  # (key, header, format)
    ("requests", "requests", "{:,}"), ("errors", "errors", "{:,}"), ("local_share", "local %", "{:.0%}"), ("escalation_rate", "escal. %", "{:.0%}"),
    ("prompt_tokens", "prompt tok", "{:,}"), ("completion_tokens", "compl. tok", "{:,}"),
    ("device_hours", "device h", SMALL), ("local_usd", "local $", SMALL), ("hosted_usd", "hosted $", SMALL),
    ("wasted_draft_usd", "wasted $", SMALL), ("cost_usd", "total $", SMALL),
    ("all_hosted_usd", "all-hosted $", SMALL), ("savings_usd", "savings $", SMALL),
    ("unpriced_requests", "unpriced", "{:,}"), ("unreferenced_requests", "no all-hosted", "{:,}"),
    ("p50_latency_ms", "p50 ms", "{:.0f}"), ("p99_latency_ms", "p99 ms", "{:.0f}"),
]


def amount(value: float) -> str:
    """1,234.50 / 0.0123 / 0.0000076: a per-key cost of a few millionths of a dollar is not 0.0000."""
    size = abs(value)
    if size == 0:
        return "0"
    if size >= 1:
        return f"{value:,.2f}"
    decimals = 4 if size >= 0.01 else min(12, 1 - math.floor(math.log10(size)))
    return f"{value:.{decimals}f}"


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    return amount(value) if fmt == SMALL else fmt.format(value)


def printable(text: str) -> str:
    """Text for a terminal: a control or format character (ESC, BEL, a right-to-left override) is shown as its
    escape (`\\x1b`), never sent. A group's name may be what a client sent, and rich passes ESC on."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def as_table(report: Report) -> Table:
    data = report.as_dict()
    window = f"{data['since'] or 'start'} .. {data['until'] or 'now'}"
    table = Table(title=f"draftgate costs by {report.query.group_by} ({window})", show_footer=True)
    table.add_column(report.query.group_by, footer="total", overflow="fold")  # a long name wraps, never cut to "…"
    for key, header, fmt in COLUMNS:
        table.add_column(header, justify="right", footer=_cell(data["total"][key], fmt))
    for row in data["rows"]:
        table.add_row(Text(printable(str(row["label"]))), *(_cell(row[key], fmt) for key, _, fmt in COLUMNS))
    return table


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula


def _inert(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula, quoted as OWASP advises: a group's name may be what a client
    sent (a `model` no alias has is recorded as sent), and `=HYPERLINK(...)` must not run where the CSV is opened."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def as_csv(report: Report) -> str:
    data = report.as_dict()
    out = io.StringIO()
    fields = ["group", "label"] + [k for k in data["total"] if k not in ("group", "label")]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in [*data["rows"], data["total"]]:
        writer.writerow({name: _inert(value) for name, value in row.items()})
    return out.getvalue()


def as_json(report: Report) -> str:
    return orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode()

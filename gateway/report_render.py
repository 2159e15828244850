"""Renders cost reports for the terminal (rich), for spreadsheets (CSV) and for programs (JSON)."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
from rich.table import Table
from rich.text import Text

from ledger.reports import Report

COLUMNS = [  # (key, header, format)
    ("requests", "requests", "{:,}"), ("local_share", "local %", "{:.0%}"), ("escalation_rate", "escal. %", "{:.0%}"),
    ("prompt_tokens", "prompt tok", "{:,}"), ("completion_tokens", "compl. tok", "{:,}"),
    ("device_hours", "device h", "{:.4f}"), ("local_usd", "local $", "{:.4f}"), ("hosted_usd", "hosted $", "{:.4f}"),
    ("wasted_draft_usd", "wasted $", "{:.4f}"), ("cost_usd", "total $", "{:.4f}"),
    ("all_hosted_usd", "all-hosted $", "{:.4f}"), ("savings_usd", "savings $", "{:.4f}"),
    ("unpriced_requests", "unpriced", "{:,}"), ("p50_latency_ms", "p50 ms", "{:.0f}"),
    ("p99_latency_ms", "p99 ms", "{:.0f}"),
]


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def as_table(report: Report) -> Table:
    data = report.as_dict()
    window = f"{data['since'] or 'start'} .. {data['until'] or 'now'}"
    table = Table(title=f"draftgate costs by {report.query.group_by} ({window})", show_footer=True)
    table.add_column(report.query.group_by, footer="total")
    for key, header, fmt in COLUMNS:
        table.add_column(header, justify="right", footer=_cell(data["total"][key], fmt))
    for row in data["rows"]:
        table.add_row(Text(str(row["label"])), *(_cell(row[key], fmt) for key, _, fmt in COLUMNS))
    return table


def as_csv(report: Report) -> str:
    data = report.as_dict()
    out = io.StringIO()
    fields = ["group", "label"] + [k for k in data["total"] if k not in ("group", "label")]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in [*data["rows"], data["total"]]:
        writer.writerow(row)
    return out.getvalue()


def as_json(report: Report) -> str:
    return orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode()

"""Grouped 30-day cost reports on a 1,000,000-row ledger, SQLite and PostgreSQL, in one run.

Seeds `--rows` synthetic requests over 90 days (ledger/synthetic.py) through the gateway's own writer
path (`Database.insert_records`, which also maintains the daily roll-up), then times, for each
grouping, the report the gateway serves (`Reporter`: roll-up for whole days, raw rows for the partial
day at the window's start) next to the same figures computed by a plain GROUP BY over the raw rows
(what the report would cost without the roll-up). Prints medians of `--repeat` runs and the ratios.

    python bench/reports.py [--rows 1000000] [--postgres-url postgresql+psycopg://...] \
        [--users 5000] [--out bench/results/reports.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import case, func, select, text

from ledger import Database
from ledger.models import RequestRow
from ledger.reports import Reporter, ReportQuery
from ledger.synthetic import synthetic_records

GROUPS = ("team", "key", "model", "provider_model", "route", "day", "rule", "user")
RAW_COLUMN = {"team": "team", "key": "key_id", "model": "model_alias", "provider_model": "provider_model",
              "route": "route", "rule": "rule", "user": "end_user"}


def seed(db: Database, rows: int, end: datetime, users: int) -> float:
    started = time.perf_counter()
    batch: list[Any] = []
    for record in synthetic_records(rows, end=end, days=90, seed=1, users=users):
        batch.append(record)
        if len(batch) == 20_000:
            db.insert_records(batch)
            batch.clear()
    db.insert_records(batch)
    return time.perf_counter() - started


def raw_group_by(db: Database, group: str, since: datetime, until: datetime) -> int:
    """The same sums straight from the raw rows (no percentiles: those need every latency)."""
    t = RequestRow.__table__
    column = func.date(t.c.created_at) if group == "day" else t.c[RAW_COLUMN[group]]
    statement = select(column, func.count(), func.sum(t.c.prompt_tokens), func.sum(t.c.completion_tokens),
                       func.sum(t.c.device_seconds), func.sum(t.c.local_cost_usd), func.sum(t.c.hosted_cost_usd),
                       func.sum(t.c.wasted_draft_usd), func.sum(t.c.reference_cost_usd),
                       func.sum(case((t.c.route == "escalated", 1), else_=0)),
                       func.sum(case((t.c.unpriced, 1), else_=0))).where(
        t.c.created_at >= since, t.c.created_at < until).group_by(column)
    with db.engine.connect() as connection:
        return len(connection.execute(statement).all())


def timed(fn: Any, repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def bench_backend(name: str, db: Database, rows: int, repeat: int, users: int) -> dict[str, Any]:
    end = datetime.now(UTC)
    db.migrate()
    seconds = seed(db, rows, end, users)
    with db.engine.connect() as connection:
        stored = connection.execute(text("SELECT COUNT(*) FROM requests")).scalar_one()
        rollup = connection.execute(text("SELECT COUNT(*) FROM usage_daily")).scalar_one()
        user_rollup = connection.execute(text("SELECT COUNT(*) FROM usage_daily_user")).scalar_one()
    since, until = end - timedelta(days=30), end + timedelta(seconds=1)
    results: dict[str, Any] = {"rows": stored, "rollup_rows": rollup, "user_rollup_rows": user_rollup,
                               "seed_seconds": round(seconds, 1), "reports": {}}
    print(f"\n{name}: {stored:,} rows seeded in {seconds:.0f} s ({stored / seconds:,.0f} rows/s); "
          f"{rollup:,} roll-up rows, {user_rollup:,} in the end users' roll-up")
    print(f"{'group_by':<14} {'report s':>9} {'groups':>7} {'raw GROUP BY s':>15} {'raw/report':>11}")
    for group in GROUPS:
        query = ReportQuery(group_by=group, since=since, until=until)  # type: ignore[arg-type]
        report_s, report = timed(lambda q=query: Reporter(db).report(q), repeat)
        raw_s, _ = timed(lambda g=group: raw_group_by(db, g, since, until), repeat)
        results["reports"][group] = {"report_s": round(report_s, 4), "groups": len(report.rows),
                                     "requests": report.total.totals.requests, "raw_group_by_s": round(raw_s, 4),
                                     "raw_over_report": round(raw_s / report_s, 1)}
        print(f"{group:<14} {report_s:>9.3f} {len(report.rows):>7} {raw_s:>15.3f} {raw_s / report_s:>10.1f}x")
    worst = max(r["report_s"] for r in results["reports"].values())
    results["worst_report_s"] = worst
    results["under_1s"] = worst < 1.0
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres-url", default=os.environ.get("DRAFTGATE_TEST_POSTGRES_URL"))
    parser.add_argument("--users", type=int, default=0, help="end users the requests name (0: none)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                       "platform": platform.platform()},
                           "date": datetime.now(UTC).isoformat(timespec="seconds"), "window_days": 30,
                           "seeded_days": 90, "end_users": args.users, "backends": {}}
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/ledger.db")
        out["backends"]["sqlite"] = bench_backend("SQLite", db, args.rows, args.repeat, args.users)
        db.dispose()
    if args.postgres_url:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = Database(args.postgres_url)
        with admin.engine.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in args.postgres_url else "?"
        db = Database(f"{args.postgres_url}{sep}options=-csearch_path%3D{schema}")
        try:
            out["backends"]["postgresql"] = bench_backend("PostgreSQL", db, args.rows, args.repeat, args.users)
        finally:
            db.dispose()
            with admin.engine.begin() as connection:
                connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()
    if args.out:
        args.out.write_text(json.dumps(out, indent=2, default=float) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

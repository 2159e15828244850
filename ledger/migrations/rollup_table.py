"""The `usage_daily` roll-up as the migrations that change its key build it: changing a primary key is a table
rebuild on SQLite, so each such migration drops the roll-up (derived data) and makes it anew, and its downgrade
folds the rows that differ only by the key it added back together."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.models import usage_daily_columns
from ledger.rollup import GROUP_COLUMNS

_INTEGERS = {c.name for c in usage_daily_columns() if isinstance(c.type, sa.BigInteger)}


def create_usage_daily(*, without: tuple[str, ...] = ()) -> None:
    """The roll-up keyed by every group column but `without` (the keys later migrations add)."""
    keys = [c for c in GROUP_COLUMNS if c not in without]
    op.create_table("usage_daily", *usage_daily_columns(without=without),
                    sa.PrimaryKeyConstraint(*keys, name="pk_usage_daily"))
    op.create_index("ix_usage_daily_team_day", "usage_daily", ["team", "day"])


def drop_usage_daily() -> None:
    op.drop_index("ix_usage_daily_team_day", "usage_daily")
    op.drop_table("usage_daily")


def fold_usage_daily(*, without: tuple[str, ...]) -> None:
    """Rebuilds the roll-up without the keys `without`, its rows summed over them (read before the rebuild)."""
    bind = op.get_bind()
    table = sa.Table("usage_daily", sa.MetaData(), autoload_with=bind)
    keys = [table.c[c] for c in GROUP_COLUMNS if c not in without and c in table.c]
    sums = [sa.func.sum(c).label(c.name) for c in table.c if c.name not in GROUP_COLUMNS]
    rows = [dict(r) for r in bind.execute(sa.select(*keys, *sums).group_by(*keys)).mappings()]
    drop_usage_daily()
    create_usage_daily(without=without)
    if rows:
        old = sa.Table("usage_daily", sa.MetaData(), autoload_with=bind)
        bind.execute(sa.insert(old), [{k: int(v) if k in _INTEGERS else v for k, v in r.items()} for r in rows])

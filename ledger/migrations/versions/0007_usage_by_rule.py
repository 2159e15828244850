"""The roll-up is keyed by the policy rule that routed each request (`rule`; '' for the default route).

`report --by rule` needs it: what each routing rule costs, how much of it is served locally, how often it
escalates and what it saves. Every request row has recorded its rule since 0001, so the roll-up (derived data)
is made anew with the new key, as 0005 did, and refilled from the requests table on both dialects: a ledger's
history is grouped by rule as if the key had always been there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.models import usage_daily_columns
from ledger.rollup import GROUP_COLUMNS

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _create(*, rule: bool) -> None:
    without = () if rule else ("rule",)
    keys = [c for c in GROUP_COLUMNS if c not in without]
    op.create_table("usage_daily", *usage_daily_columns(without=without),
                    sa.PrimaryKeyConstraint(*keys, name="pk_usage_daily"))
    op.create_index("ix_usage_daily_team_day", "usage_daily", ["team", "day"])


def _drop() -> None:
    op.drop_index("ix_usage_daily_team_day", "usage_daily")
    op.drop_table("usage_daily")


def upgrade() -> None:
    _drop()
    _create(rule=True)
    # The refill writes the newest roll-up key: a later migration that changes the key takes it over, as this one
    # took it over from 0005.
    from ledger.db import backfill_usage

    backfill_usage(op.get_bind())


def downgrade() -> None:
    """Folds the rows that differ only by rule back together (sums, read before the rebuild)."""
    bind = op.get_bind()
    table = sa.Table("usage_daily", sa.MetaData(), autoload_with=bind)
    keys = [table.c[c] for c in GROUP_COLUMNS if c != "rule"]
    sums = [sa.func.sum(c).label(c.name) for c in table.c if c.name not in GROUP_COLUMNS]
    rows = [dict(r) for r in bind.execute(sa.select(*keys, *sums).group_by(*keys)).mappings()]
    _drop()
    _create(rule=False)
    if rows:
        old = sa.Table("usage_daily", sa.MetaData(), autoload_with=bind)
        bind.execute(sa.insert(old), [{k: int(v) if k in _INTEGERS else v for k, v in r.items()} for r in rows])


_INTEGERS = {c.name for c in usage_daily_columns() if isinstance(c.type, sa.BigInteger)}

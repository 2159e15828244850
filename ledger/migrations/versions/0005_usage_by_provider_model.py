"""The roll-up is keyed by the model that answered too (`provider_model`), not only by the requested alias.

`report --by provider_model` needs it: an alias such as `auto` or a cascade is answered by the local model or
by a hosted one. Changing a primary key is a table rebuild on SQLite, so the roll-up (derived data) is made
anew, on both dialects, and refilled from the requests table by 0007 (which adds the `rule` key: the refill
writes the newest key, so it runs in the newest of the migrations that rebuild the roll-up).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.models import usage_daily_columns
from ledger.rollup import GROUP_COLUMNS

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _create(*, without: tuple[str, ...]) -> None:
    keys = [c for c in GROUP_COLUMNS if c not in without]
    op.create_table("usage_daily", *usage_daily_columns(without=without),
                    sa.PrimaryKeyConstraint(*keys, name="pk_usage_daily"))
    op.create_index("ix_usage_daily_team_day", "usage_daily", ["team", "day"])


def _drop() -> None:
    op.drop_index("ix_usage_daily_team_day", "usage_daily")
    op.drop_table("usage_daily")


def upgrade() -> None:
    _drop()
    _create(without=("rule",))


def downgrade() -> None:
    """Folds the rows that differ only by answering model back together (sums, read before the rebuild)."""
    bind = op.get_bind()
    table = sa.Table("usage_daily", sa.MetaData(), autoload_with=bind)
    keys = [table.c[c] for c in GROUP_COLUMNS if c not in ("provider_model", "rule")]  # 0007's downgrade ran
    sums = [sa.func.sum(c).label(c.name) for c in table.c if c.name not in GROUP_COLUMNS]
    rows = [dict(r) for r in bind.execute(sa.select(*keys, *sums).group_by(*keys)).mappings()]
    _drop()
    _create(without=("provider_model", "rule"))
    if rows:
        old = sa.Table("usage_daily", sa.MetaData(), autoload_with=bind)
        bind.execute(sa.insert(old), [{k: int(v) if k in _INTEGERS else v for k, v in r.items()} for r in rows])


_INTEGERS = {c.name for c in usage_daily_columns() if isinstance(c.type, sa.BigInteger)}

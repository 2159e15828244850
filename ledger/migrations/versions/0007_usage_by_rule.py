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

from alembic import op

from ledger.migrations.rollup_table import create_usage_daily, drop_usage_daily, fold_usage_daily

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    drop_usage_daily()
    create_usage_daily()
    # The refill writes the newest roll-up key: a later migration that changes the key takes it over, as this one
    # took it over from 0005.
    from ledger.db import backfill_usage

    backfill_usage(op.get_bind())


def downgrade() -> None:
    """Folds the rows that differ only by rule back together."""
    fold_usage_daily(without=("rule",))

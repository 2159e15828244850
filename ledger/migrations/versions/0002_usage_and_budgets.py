"""Daily usage roll-up (fast reports), budget counters, and per-key limits.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.migrations.rollup_table import create_usage_daily, drop_usage_daily

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_usage_daily(without=("provider_model", "rule"))  # the roll-up as it was: 0005 and 0007 add those keys
    op.create_table(
        "budget_usage",
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("metric", sa.String(8), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.Float(), nullable=False),
        sa.Column("reserved", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "metric", "window_start"),
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("max_budget_usd", sa.Float()))
        batch.add_column(sa.Column("budget_period", sa.String(16)))
        batch.add_column(sa.Column("rpm_limit", sa.Integer()))
        batch.add_column(sa.Column("tpm_limit", sa.Integer()))
    # Ledgers written before the roll-up existed: 0007 fills it from their rows (its key is complete there).


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        for name in ("tpm_limit", "rpm_limit", "budget_period", "max_budget_usd"):
            batch.drop_column(name)
    op.drop_table("budget_usage")
    drop_usage_daily()

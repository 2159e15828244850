"""The roll-up keeps the dollars of requests without an all-hosted counterfactual (no `reference_model`).

Before, such requests counted as unpriced and their known cost was left out of every total; the roll-up is
rebuilt from the requests table (by 0007, which runs after it) so that older days read the same way.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.models import unreferenced_columns

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("usage_daily")}
    missing = [c for c in unreferenced_columns() if c.name not in present]  # 0002 on a new database has them
    if missing:
        with op.batch_alter_table("usage_daily") as batch:
            for column in missing:
                batch.add_column(column)
    # The roll-up is rebuilt from the requests table by 0007, whose key the rebuild writes.


def downgrade() -> None:
    with op.batch_alter_table("usage_daily") as batch:
        batch.drop_column("unreferenced_usd")
        batch.drop_column("unreferenced")

"""Each request records its `user` (OpenAI's field for the client's own end user) and the roll-up is keyed by it.

`report --by user` needs it: what each of an app's end users costs, as LiteLLM's end-user spend tracking shows.
Requests before this migration named no user (the gateway did not keep it), so their rows have none. Changing the
roll-up's primary key is a table rebuild on SQLite, so the roll-up (derived data) is made anew on both dialects and
refilled from the requests table: this is the newest migration that rebuilds it, so the refill runs here.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.migrations.rollup_table import create_usage_daily, drop_usage_daily, fold_usage_daily

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("end_user", sa.String(512), nullable=True))
    drop_usage_daily()
    create_usage_daily()
    from ledger.db import backfill_usage

    backfill_usage(op.get_bind())


def downgrade() -> None:
    """Folds the rows that differ only by end user back together, then drops the requests' column."""
    fold_usage_daily(without=("end_user",))
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("end_user")

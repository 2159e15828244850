"""Each request records its `user` (OpenAI's field for the client's own end user), rolled up by day, team, key,
route and end user.

`report --by user` needs it: what each of an app's end users costs, as LiteLLM's end-user spend tracking shows.
The end users have a roll-up of their own (`usage_daily_user`) rather than a key in the main one: an app that names
its users may have thousands a day, which would multiply the main roll-up's rows for every other report. Requests
before this migration named no user (the gateway did not keep it): they are rolled up under none.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.models import usage_daily_user_columns
from ledger.rollup import USER_GROUP_COLUMNS

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("end_user", sa.String(512), nullable=True))
    op.create_table("usage_daily_user", *usage_daily_user_columns(),
                    sa.PrimaryKeyConstraint(*USER_GROUP_COLUMNS, name="pk_usage_daily_user"))
    op.create_index("ix_usage_daily_user_team_day", "usage_daily_user", ["team", "day"])
    from ledger.db import backfill_user_usage

    backfill_user_usage(op.get_bind())


def downgrade() -> None:
    op.drop_index("ix_usage_daily_user_team_day", "usage_daily_user")
    op.drop_table("usage_daily_user")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("end_user")

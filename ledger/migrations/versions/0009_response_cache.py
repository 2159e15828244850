"""The exact-match response cache's table: answers stored in the ledger database so every replica shares them.

Nothing is migrated into it (a ledger upgraded to it starts with an empty cache), and its downgrade only drops it:
a cache is derived data, never the only copy of anything.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.models import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "response_cache",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("provider_model", sa.String(256)),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("reference_cost_usd", sa.Float()),
        sa.Column("body", sa.JSON(), nullable=False),
    )
    op.create_index("ix_response_cache_expires_at", "response_cache", ["expires_at"])
    op.create_index("ix_response_cache_created_at", "response_cache", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_response_cache_created_at", "response_cache")
    op.drop_index("ix_response_cache_expires_at", "response_cache")
    op.drop_table("response_cache")

"""Initial ledger: requests, api_keys, teams.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=False),
        sa.Column("key_id", sa.String(64)),
        sa.Column("team", sa.String(128)),
        sa.Column("model_alias", sa.String(256), nullable=False),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("provider_model", sa.String(256)),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("hosted_cost_usd", sa.Float()),
        sa.Column("local_cost_usd", sa.Float()),
        sa.Column("device_seconds", sa.Float(), nullable=False),
        sa.Column("wasted_draft_usd", sa.Float(), nullable=False),
        sa.Column("reference_cost_usd", sa.Float()),
        sa.Column("unpriced", sa.Boolean(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(256)),
        sa.Column("error", sa.Text()),
        sa.Column("escalation_reason", sa.Text()),
        sa.Column("detail", sa.JSON()),
    )
    op.create_index("ix_requests_created_at", "requests", ["created_at"])
    op.create_index("ix_requests_team_created_at", "requests", ["team", "created_at"])
    op.create_index("ix_requests_key_created_at", "requests", ["key_id", "created_at"])
    op.create_index("ix_requests_model_alias", "requests", ["model_alias"])
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("team", sa.String(128)),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime()),
    )
    op.create_table(
        "teams",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("teams")
    op.drop_table("api_keys")
    op.drop_index("ix_requests_model_alias", "requests")
    op.drop_index("ix_requests_key_created_at", "requests")
    op.drop_index("ix_requests_team_created_at", "requests")
    op.drop_index("ix_requests_created_at", "requests")
    op.drop_table("requests")

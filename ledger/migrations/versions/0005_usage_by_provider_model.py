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

from ledger.migrations.rollup_table import create_usage_daily, drop_usage_daily, fold_usage_daily

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    drop_usage_daily()
    create_usage_daily(without=("rule",))


def downgrade() -> None:
    """Folds the rows that differ only by answering model back together (0007's downgrade already folded rules)."""
    fold_usage_daily(without=("provider_model", "rule"))

"""No two unrevoked virtual keys share a name: a partial unique index on `api_keys.name WHERE revoked_at IS NULL`.

The gateway checked names before inserting, but two `keys create` (CLI or POST /admin/keys) running at once both
passed the check and both succeeded. A ledger that already has such twins keeps every key working: the oldest
(by creation time) keeps the name and each later one is renamed `NAME (duplicate KEY_ID)`, with a warning, so
`key:` policy rules naming it match only the oldest from now on. Revoking one is never done for the operator.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

NAME_CHARS = 128  # the column's length
LIVE = "revoked_at IS NULL"


def _rename_twins(bind: sa.Connection) -> None:
    keys = sa.table("api_keys", sa.column("key_id"), sa.column("name"), sa.column("created_at"),
                    sa.column("revoked_at"))
    live = bind.execute(sa.select(keys.c.key_id, keys.c.name).where(keys.c.revoked_at.is_(None))
                        .order_by(keys.c.name, keys.c.created_at, keys.c.key_id)).all()
    seen: set[str] = set()
    for key_id, name in live:
        if name not in seen:
            seen.add(name)
            continue
        suffix = f" (duplicate {key_id})"
        renamed = name[: NAME_CHARS - len(suffix)] + suffix
        bind.execute(sa.update(keys).where(keys.c.key_id == key_id).values(name=renamed))
        logging.getLogger("draftgate").warning("migration 0006: live key %s shared the name %r with an older key; "
                                               "renamed %r", key_id, name, renamed)


def upgrade() -> None:
    _rename_twins(op.get_bind())
    op.create_index("uq_api_keys_live_name", "api_keys", ["name"], unique=True,
                    sqlite_where=sa.text(LIVE), postgresql_where=sa.text(LIVE))


def downgrade() -> None:
    """Drops the index; renamed keys keep their new names."""
    op.drop_index("uq_api_keys_live_name", "api_keys")

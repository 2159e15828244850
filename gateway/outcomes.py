"""Verification outcomes recorded by the gateway, as training rows for the difficulty classifier."""

from __future__ import annotations

from pathlib import Path

from ledger import Database, missing_sqlite_file
from router.training import TrainingRow


def ledger_outcomes(database_url: str) -> list[TrainingRow]:
    """Cascade drafts and their fate: escalated (label 1, the hosted model was needed) or served (0). A SQLite
    ledger that does not exist (a gateway that never started, or another data dir) has none, and opening it
    would create it, and its folders, where no gateway writes: it is left alone."""
    missing = missing_sqlite_file(database_url)
    if missing is not None and not Path(missing).parent.is_file():  # under a file: Database says why it cannot be
        return []
    db = Database(database_url)
    rows = []
    try:
        db.migrate()  # a gateway that never started has no tables yet: that is zero outcomes, not a crash
        for record in db.iter_records(routes=("local", "escalated")):
            outcome = (record.detail or {}).get("outcome")
            if not isinstance(outcome, dict) or not outcome.get("prompt"):
                continue
            label = 0.0 if outcome.get("passed") else 1.0
            rows.append(TrainingRow(prompt=outcome["prompt"], label=label, draft=None, source="ledger"))
            if outcome.get("draft"):
                rows.append(TrainingRow(prompt=outcome["prompt"], label=label, draft=outcome["draft"],
                                        source="ledger+draft"))
    finally:
        db.dispose()
    return rows

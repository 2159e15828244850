"""Errors raised by the ledger."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every ledger error."""


class UnknownKeyError(LedgerError):
    """No virtual key has this id."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no key with id {key_id}")
        self.key_id = key_id

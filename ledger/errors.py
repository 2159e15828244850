"""Errors raised by the ledger."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every ledger error."""


class DatabaseUnavailableError(LedgerError):
    """The ledger database did not answer (down, unreachable, locked past its timeout): worth a retry."""


class UnknownKeyError(LedgerError):
    """No virtual key has this id."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no key with id {key_id}")
        self.key_id = key_id


class PeriodWithoutBudgetError(LedgerError, ValueError):
    """A key would have a `budget_period` but no `max_budget_usd`: the period alone limits nothing."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"key {key_id} has no budget, so a budget period would limit nothing")
        self.key_id = key_id


class KeyNameTakenError(LedgerError):
    """Another unrevoked key already has this name (the database's unique index refused the new one)."""

    def __init__(self, name: str, key_id: str) -> None:
        super().__init__(f"the live key {key_id} is already named {name!r}")
        self.name = name
        self.key_id = key_id

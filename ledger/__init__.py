"""The cost ledger: one row per request, batched crash-safe writes, prices, virtual keys."""

from ledger.cache import CachedAnswer, ResponseCache
from ledger.db import Database, missing_sqlite_file
from ledger.errors import (
    DatabaseUnavailableError,
    KeyNameTakenError,
    LedgerError,
    PeriodWithoutBudgetError,
    UnknownKeyError,
)
from ledger.keys import DURATION_PATTERN, KeyInfo, KeyStore, parse_duration
from ledger.pricing import Price, PriceBook
from ledger.records import RequestRecord
from ledger.writer import LedgerWriter

__all__ = [
    "DURATION_PATTERN",
    "CachedAnswer",
    "Database",
    "DatabaseUnavailableError",
    "KeyInfo",
    "KeyNameTakenError",
    "KeyStore",
    "LedgerError",
    "LedgerWriter",
    "PeriodWithoutBudgetError",
    "Price",
    "PriceBook",
    "RequestRecord",
    "ResponseCache",
    "UnknownKeyError",
    "missing_sqlite_file",
    "parse_duration",
]

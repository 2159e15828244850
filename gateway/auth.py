"""Who is calling: the master key, a virtual key from the ledger, or a static key from the YAML."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.errors import AuthenticationFailed, PermissionDenied
from ledger import KeyInfo, KeyStore
from ledger.budgets import Limits


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    key_id: str | None
    key_name: str | None
    team: str | None
    is_master: bool = False
    limits: Limits | None = None  # a virtual key's own budget and rate limits, read with the key


OPEN_PRINCIPAL = Principal(key_id=None, key_name=None, team=None)
MASTER_PRINCIPAL = Principal(key_id=None, key_name="master", team=None, is_master=True)


@dataclass(frozen=True)
class StaticKey:
    """A key written in the YAML (resolved from the environment), never stored."""

    name: str
    raw: str
    team: str | None


def _digest(raw: str) -> bytes:
    return hashlib.sha256(raw.encode("utf-8")).digest()


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer`, `api-key` (Azure style) or `x-api-key`."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return headers.get("api-key") or headers.get("x-api-key")


class Authenticator:
    """Verifies keys in constant time. Virtual keys are looked up in the shared database on every request.

    Nothing about a virtual key is cached, so a revocation committed by any replica (or by
    `draftgate keys revoke`) refuses the very next request everywhere. The cost is one SHA-256 and one
    unique-index lookup per request (measured in docs/reliability.md); master and static keys never
    touch the database.
    """

    def __init__(self, master_key: str | None, static_keys: Iterable[StaticKey], store: KeyStore) -> None:
        self._master = _digest(master_key) if master_key else None
        self._static = [(_digest(k.raw), Principal(f"config:{k.name}", k.name, k.team)) for k in static_keys]
        self._store = store

    @property
    def open_mode(self) -> bool:
        """No master key: any caller is served (a loud warning at startup says so)."""
        return self._master is None

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The caller, or AuthenticationFailed."""
        token = bearer_token(headers)
        if token is None:
            if self.open_mode:
                return OPEN_PRINCIPAL
            raise AuthenticationFailed("Missing API key: send `Authorization: Bearer <key>`.")
        digest = _digest(token)
        if self._master is not None and hmac.compare_digest(digest, self._master):
            return MASTER_PRINCIPAL
        for key_digest, principal in self._static:
            if hmac.compare_digest(digest, key_digest):
                return principal
        info: KeyInfo | None = await asyncio.to_thread(self._store.verify, token)
        if info is not None:
            return Principal(info.key_id, info.name, info.team, limits=info.limits)
        if self.open_mode:
            return OPEN_PRINCIPAL
        raise AuthenticationFailed("Incorrect API key provided.")

    def require_master(self, principal: Principal) -> None:
        """Admin endpoints: master key only."""
        if not principal.is_master:
            raise PermissionDenied("This endpoint needs the master key.")

"""Who is calling: the master key, a virtual key from the ledger, or a static key from the YAML."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.errors import AuthenticationFailed, PermissionDenied
from ledger import KeyInfo, KeyStore


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    key_id: str | None
    key_name: str | None
    team: str | None
    is_master: bool = False


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
    """Verifies keys in constant time; verified virtual keys are trusted for `ttl_s` seconds."""

    def __init__(self, master_key: str | None, static_keys: Iterable[StaticKey], store: KeyStore,
                 *, ttl_s: float = 2.0) -> None:
        self._master = _digest(master_key) if master_key else None
        self._static = [(_digest(k.raw), Principal(f"config:{k.name}", k.name, k.team)) for k in static_keys]
        self._store = store
        self._ttl_s = ttl_s
        self._cache: dict[bytes, tuple[float, Principal]] = {}

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
        found = await self._virtual(token, digest)
        if found is not None:
            return found
        if self.open_mode:
            return OPEN_PRINCIPAL
        raise AuthenticationFailed("Incorrect API key provided.")

    async def _virtual(self, token: str, digest: bytes) -> Principal | None:
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        info: KeyInfo | None = await asyncio.to_thread(self._store.verify, token)
        if info is None:
            self._cache.pop(digest, None)
            return None
        principal = Principal(info.key_id, info.name, info.team)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, principal)
        return principal

    def forget(self, key_id: str) -> None:
        """Drops a revoked key from this process's cache at once."""
        for digest, (_, principal) in list(self._cache.items()):
            if principal.key_id == key_id:
                del self._cache[digest]

    def require_master(self, principal: Principal) -> None:
        """Admin endpoints: master key only."""
        if not principal.is_master:
            raise PermissionDenied("This endpoint needs the master key.")

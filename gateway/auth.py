"""Who is calling: the master key, a virtual key from the ledger, or a static key from the YAML."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.errors import AuthenticationFailed, ModelNotAllowed, PermissionDenied
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
    models: frozenset[str] | None = None  # the aliases this key may request; None: every one

    def may_use(self, alias: str) -> bool:
        return self.models is None or alias in self.models

    def check_model(self, alias: str) -> None:
        """ModelNotAllowed unless this key may request `alias` (what the request names, as LiteLLM checks)."""
        if not self.may_use(alias):
            allowed = ", ".join(sorted(self.models or ()))
            raise ModelNotAllowed(f"This key may not use the model `{alias}`; it may use: {allowed}.", param="model")


OPEN_PRINCIPAL = Principal(key_id=None, key_name=None, team=None)
MASTER_PRINCIPAL = Principal(key_id=None, key_name="master", team=None, is_master=True)


@dataclass(frozen=True)
class StaticKey:
    """A key written in the YAML (resolved from the environment), never stored."""

    name: str
    raw: str
    team: str | None
    models: tuple[str, ...] | None = None


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
        self._static = [(_digest(k.raw), Principal(f"config:{k.name}", k.name, k.team,
                                                   models=frozenset(k.models) if k.models is not None else None))
                        for k in static_keys]
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
            if info.revoked_at is not None:
                raise AuthenticationFailed(f"This API key was revoked at {info.revoked_at:%Y-%m-%dT%H:%M:%SZ}.")
            if info.expired():
                raise AuthenticationFailed(f"This API key expired at {info.expires_at:%Y-%m-%dT%H:%M:%SZ}.")
            # Team '' is how the roll-up keeps requests without a team: a key stored with it (the admin API took
            # it before) would read their figures as its team's, so it is a key without a team.
            return Principal(info.key_id, info.name, info.team or None, limits=info.limits,
                             models=frozenset(info.models) if info.models is not None else None)
        if self.open_mode:
            return OPEN_PRINCIPAL
        raise AuthenticationFailed("Incorrect API key provided.")

    def require_master(self, principal: Principal) -> None:
        """Admin endpoints: master key only."""
        if not principal.is_master:
            if self.open_mode:  # no key can open it: say what would
                raise PermissionDenied("This endpoint needs the master key, and this gateway has none (open mode): "
                                       "set `master_key` (or DRAFTGATE_MASTER_KEY), or use `draftgate keys`.")
            raise PermissionDenied("This endpoint needs the master key.")

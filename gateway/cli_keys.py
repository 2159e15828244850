"""`draftgate keys`: virtual keys, stored hashed in the ledger database."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column, Table

from gateway.cli_common import (
    ConfigOpt,
    config_or_exit,
    console,
    err,
    ledger_or_exit,
    no_ledger,
    non_empty_option,
    plain,
    settings_or_exit,
    table_console,
    text_option,
)

if TYPE_CHECKING:
    from ledger import KeyStore
    from ledger.budgets import Limits

keys_app = typer.Typer(help="Virtual keys (stored hashed in the ledger database).", no_args_is_help=True)


class NoLedgerError(Exception):
    """The SQLite ledger a command would only read or change is not there (opening it would create it)."""


def _key_store(config: Path | None, models: list[str] | None = None, *, create: bool = False) -> KeyStore:
    """The key store; `models` must be aliases this configuration serves (one line and exit 2 if not). Only
    `keys create` makes a ledger that is not there: NoLedgerError for the others."""
    from ledger import KeyStore, missing_sqlite_file

    settings = settings_or_exit(config)
    gateway = config_or_exit(settings)
    served = set(gateway.requestable_aliases())
    unknown = [m for m in models or () if m not in served]
    if unknown:
        err.print(f"error: --models: unknown model alias(es): {', '.join(unknown)}", markup=False)
        raise typer.Exit(code=2)
    missing = missing_sqlite_file(settings.resolved_database_url(gateway.database_url))
    if missing is not None and not create:
        raise NoLedgerError(missing)
    return KeyStore(ledger_or_exit(settings, gateway))


def _aliases(value: str | None) -> list[str] | None:
    """`a,b` into ["a", "b"]; an empty list would lock the key out of everything, so it is refused."""
    if value is None:
        return None
    text_option(value)
    aliases = [a.strip() for a in value.split(",") if a.strip()]
    if not aliases:
        raise typer.BadParameter("needs at least one model alias")
    return aliases


def _duration(value: str | None) -> str | None:
    from ledger import parse_duration

    if value is not None:
        try:
            parse_duration(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


def _unknown_key(key_id: str, config: Path | None, exc: Exception | None = None) -> str:
    """Why an id is not a virtual key: `report --by key` also lists config keys (`config:<name>`), which live in
    draftgate.yaml, not in the database."""
    name = key_id.removeprefix("config:")
    if name != key_id and any(k.name == name for k in config_or_exit(settings_or_exit(config)).keys):
        return (f"{key_id} is the config file's key {name!r} (keys: in draftgate.yaml), not a virtual key: "
                "change or remove it there")
    if isinstance(exc, NoLedgerError):
        return f"no key with id {key_id}: {no_ledger(str(exc))}"
    return f"no key with id {key_id}"


NAME_CHARS = 128  # the ledger's name and team columns, as POST /admin/keys caps them


def _key_name(value: str) -> str:
    non_empty_option(value)
    if len(value) > NAME_CHARS:
        raise typer.BadParameter(f"at most {NAME_CHARS} characters (got {len(value)})")
    return value


def _team_name(value: str | None) -> str | None:
    return None if value is None else _key_name(value)


PERIOD_ALONE = "--budget-period needs --max-budget-usd: without a budget a period limits nothing"


class Period(str, Enum):
    hour = "hour"
    day = "day"
    week = "week"
    month = "month"
    total = "total"


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Option(help="a label for the key", callback=_key_name)],
                team: Annotated[str | None, typer.Option(help="the team it spends for", callback=_team_name)] = None,
                max_budget_usd: Annotated[float | None, typer.Option(min=0, max=1e12,
                                                                     help="dollar budget per period")] = None,
                budget_period: Annotated[Period | None, typer.Option(
                    help="when the budget resets (default month; needs --max-budget-usd)")] = None,
                rpm: Annotated[int | None, typer.Option(min=1, max=10**12, help="requests per minute")] = None,
                tpm: Annotated[int | None, typer.Option(min=1, max=10**12, help="tokens per minute")] = None,
                models: Annotated[str | None, typer.Option(help="the only aliases it may request, comma-separated "
                                                           "(default: every one)")] = None,
                duration: Annotated[str | None, typer.Option(help="lifetime: 30d, 12h, 45m, 90s (default: none)",
                                                             callback=_duration)] = None,
                config: ConfigOpt = None) -> None:
    """Create a virtual key; the secret is printed once."""
    from datetime import UTC, datetime

    from gateway.services import new_key_problem
    from ledger import KeyNameTakenError, parse_duration
    from ledger.budgets import Limits

    if budget_period is not None and max_budget_usd is None:
        err.print(f"error: {PERIOD_ALONE}", markup=False)
        raise typer.Exit(code=2)
    allowed = _aliases(models)
    expires_at = datetime.now(UTC) + parse_duration(duration) if duration else None
    store = _key_store(config, allowed, create=True)
    problem = new_key_problem(config_or_exit(settings_or_exit(config)), name, team)
    if problem is not None:
        err.print(f"error: --{problem[0]}: {problem[1]}", markup=False)
        raise typer.Exit(code=2)
    period = budget_period or Period.month
    try:
        raw, info = store.create(name, team, Limits(max_budget_usd, period.value, rpm, tpm),
                                 models=allowed, expires_at=expires_at)
    except KeyNameTakenError as exc:
        err.print(f"error: --name: {exc}", markup=False)
        raise typer.Exit(code=2) from None
    console.print(f"key_id: {info.key_id}\nteam:   {plain(info.team or '-')}")
    if info.models is not None:
        console.print(f"models: {', '.join(info.models)}", markup=False)
    if info.expires_at is not None:
        console.print(f"expires: {info.expires_at:%Y-%m-%d %H:%M:%S} UTC")
    typer.echo(f"key:    {raw}")
    err.print("Store the key now: only its hash is kept.")


class Clearable(str, Enum):
    budget = "budget"
    rpm = "rpm"
    tpm = "tpm"
    models = "models"
    expiry = "expiry"


CLEARS = {Clearable.budget: "max_budget_usd", Clearable.rpm: "rpm_limit", Clearable.tpm: "tpm_limit",
          Clearable.models: "models", Clearable.expiry: "expires_at"}


@keys_app.command("update")
def keys_update(key_id: Annotated[str, typer.Argument(help="the key_id to change", callback=text_option)],
                max_budget_usd: Annotated[float | None, typer.Option(min=0, max=1e12,
                                                                     help="dollar budget per period")] = None,
                budget_period: Annotated[Period | None, typer.Option(help="when the budget resets")] = None,
                rpm: Annotated[int | None, typer.Option(min=1, max=10**12, help="requests per minute")] = None,
                tpm: Annotated[int | None, typer.Option(min=1, max=10**12, help="tokens per minute")] = None,
                models: Annotated[str | None, typer.Option(help="the only aliases it may request, comma-separated")
                                  ] = None,
                duration: Annotated[str | None, typer.Option(help="a new lifetime from now: 30d, 12h, 45m, 90s",
                                                             callback=_duration)] = None,
                clear: Annotated[list[Clearable] | None, typer.Option(
                    help="remove a limit: budget, rpm, tpm, models (every alias again) or expiry; repeatable")] = None,
                config: ConfigOpt = None) -> None:
    """Change a key's limits, models or expiry in place: its secret stays, and every replica applies the
    change on the key's next request."""
    from datetime import UTC, datetime

    from ledger import PeriodWithoutBudgetError, UnknownKeyError, parse_duration

    allowed = _aliases(models)
    changes: dict[str, object] = {CLEARS[c]: None for c in clear or ()}
    given = {"max_budget_usd": max_budget_usd, "rpm_limit": rpm, "tpm_limit": tpm, "models": allowed,
             "expires_at": duration}
    both = [c.value for c in clear or () if given[CLEARS[c]] is not None
            or (c is Clearable.budget and budget_period is not None)]
    if both:
        err.print(f"error: --clear {both[0]} and a new value for it at once")
        raise typer.Exit(code=2)
    for name, value in given.items():
        if value is not None and name != "expires_at":
            changes[name] = value
    if budget_period is not None:
        changes["budget_period"] = budget_period.value
    if duration is not None:
        changes["expires_at"] = datetime.now(UTC) + parse_duration(duration)
    if not changes:
        err.print("error: nothing to change (give a limit, --models, --duration or --clear)")
        raise typer.Exit(code=2)
    try:
        info = _key_store(config, allowed).update(key_id, changes)
    except (UnknownKeyError, NoLedgerError) as exc:
        err.print(f"error: {_unknown_key(key_id, config, exc)}", markup=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    except PeriodWithoutBudgetError:
        err.print(f"error: {PERIOD_ALONE} ({key_id} has no budget)", markup=False)
        raise typer.Exit(code=2) from None
    limits = info.limits
    if info.revoked_at is not None:  # the change is kept, but the key stays refused
        err.print(f"note: {info.key_id} was revoked at {info.revoked_at:%Y-%m-%d %H:%M:%S} UTC; it stays refused",
                  markup=False)
    console.print(f"updated {info.key_id} ({plain(info.name)}): budget "
                  f"{'-' if limits.max_budget_usd is None else f'${limits.max_budget_usd:g}/{limits.budget_period}'}, "
                  f"rpm {limits.rpm_limit or '-'}, tpm {limits.tpm_limit or '-'}, "
                  f"models {plain(', '.join(info.models)) if info.models else 'all'}, "
                  f"expires {f'{info.expires_at:%Y-%m-%d %H:%M:%S} UTC' if info.expires_at else 'never'}")


class ListFormat(str, Enum):
    table = "table"
    json = "json"


def _limits_text(limits: Limits) -> tuple[str, str, str]:
    budget = f"${limits.max_budget_usd:g}/{limits.budget_period}" if limits.max_budget_usd is not None else ""
    return (budget, str(limits.rpm_limit) if limits.rpm_limit is not None else "",
            str(limits.tpm_limit) if limits.tpm_limit is not None else "")


@keys_app.command("list")
def keys_list(team: Annotated[str | None, typer.Option(help="only this team", callback=text_option)] = None,
              format: Annotated[ListFormat, typer.Option("--format", help="table or json (for scripts)")]
              = ListFormat.table,
              config: ConfigOpt = None) -> None:
    """List keys (never their secrets)."""
    try:
        keys = _key_store(config).list(team)
    except NoLedgerError as exc:
        err.print(f"error: {no_ledger(str(exc))}", markup=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    if format is ListFormat.json:
        print(json.dumps([{"key_id": k.key_id, "name": k.name, "team": k.team, "prefix": k.prefix,
                           "models": list(k.models) if k.models is not None else None,
                           "max_budget_usd": k.limits.max_budget_usd, "budget_period": k.limits.budget_period,
                           "rpm_limit": k.limits.rpm_limit, "tpm_limit": k.limits.tpm_limit,
                           "created_at": k.created_at.isoformat(),
                           "expires_at": k.expires_at.isoformat() if k.expires_at else None,
                           "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None} for k in keys], indent=2))
        return
    # The id is what `keys update` and `keys revoke` take: never cut, whatever the terminal's width.
    table = Table(Column("key_id", no_wrap=True, min_width=max((len(k.key_id) for k in keys), default=6)),
                  "name", "team", "prefix", "models", "budget", "rpm", "tpm", "created", "expires", "revoked")
    for k in keys:
        table.add_row(k.key_id, plain(k.name), plain(k.team or "-"), k.prefix + "…",
                      plain(", ".join(k.models)) if k.models else "all", *_limits_text(k.limits),
                      f"{k.created_at:%Y-%m-%d %H:%M}", f"{k.expires_at:%Y-%m-%d %H:%M}" if k.expires_at else "",
                      f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
    table_console().print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key_id to revoke", callback=text_option)],
                config: ConfigOpt = None) -> None:
    """Revoke a key."""
    from ledger import UnknownKeyError

    try:
        store = _key_store(config)
        before = store.get(key_id)
        info = store.revoke(key_id)
    except (UnknownKeyError, NoLedgerError) as exc:
        err.print(f"error: {_unknown_key(key_id, config, exc)}", markup=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    if before is not None and before.revoked_at is not None:
        console.print(f"{info.key_id} ({plain(info.name)}) was already revoked at "
                      f"{before.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
        return
    console.print(f"revoked {info.key_id} ({plain(info.name)})")

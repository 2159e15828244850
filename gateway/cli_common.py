"""What every `draftgate` command shares: consoles, the --config option, settings, config and ledger
loading that turn bad input into one line and an exit code instead of a traceback."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

import policies
from gateway.settings import Settings

if TYPE_CHECKING:
    from ledger import Database

console = Console(soft_wrap=True)  # a line a script may parse (`key_id:`, `updated ...`) stays one line in a pipe
err = Console(stderr=True, soft_wrap=True)  # a message is one line, however narrow (a pipe: 80 columns)

def table_console() -> Console:
    """Where tables go: the terminal at its width; a pipe, file or CI log (no width: rich assumes 80, and cuts
    cells to "ap…") at 220 columns, so every cell is whole."""
    return console if console.is_terminal else Console(width=220)


def plain(value: object) -> str:
    """Text from users (key, team and rule names, paths, messages) for rich markup: `[/]` stays literal
    instead of a MarkupError traceback, `[red]` is not a colour."""
    return escape(str(value))


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="draftgate.yaml (default: embedded)",
                                                 envvar="DRAFTGATE_CONFIG")]


SECRET_SETTINGS = frozenset({"master_key", "database_url", "DATABASE_URL"})  # never echoed in an error


def settings_or_exit(config: Path | None) -> Settings:
    """Process settings; a bad environment variable is one line each and exit 2, not a traceback."""
    for name, meant in misspelt_settings(os.environ):
        typer.echo(f"warning: {name} is not a draftgate setting, ignored (did you mean {meant}?)", err=True)
    try:
        return Settings(config=config) if config is not None else Settings()
    except ValidationError as exc:
        err.print(f"[red]error:[/red] {exc.error_count()} bad setting(s) in the environment")
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            name = field if field.isupper() else f"DRAFTGATE_{field.upper()}"
            shown = "" if field in SECRET_SETTINGS else f" (got {error.get('input')!r})"
            typer.echo(f"{name}: {error['msg'].removeprefix('Value error, ')}{shown}", err=True)
        raise typer.Exit(2) from None


def misspelt_settings(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """`DRAFTGATE_*` variables that are no setting but nearly one (DRAFTGATE_PORTS, DRAFTGATE_LOGLEVEL): pydantic
    ignores them, so the typo would go unnoticed. Other unknown names stay quiet: they may be secrets that
    draftgate.yaml reads with os.environ/."""
    known = {"DATABASE_URL", *(f"DRAFTGATE_{field.upper()}" for field in Settings.model_fields)}
    suffixes = {name.removeprefix("DRAFTGATE_"): name for name in known}
    found = []
    for name in sorted(env):
        if name.startswith("DRAFTGATE_") and name not in known:
            close = difflib.get_close_matches(name.removeprefix("DRAFTGATE_"), suffixes, n=1, cutoff=0.75)
            if close:
                found.append((name, suffixes[close[0]]))
    return found


def config_or_exit(settings: Settings) -> policies.GatewayConfig:
    from gateway.services import load_config

    try:
        return load_config(settings)
    except policies.ConfigError as exc:
        err.print(f"[red]error:[/red] {len(exc.problems)} problem(s) in the configuration")
        for problem in exc.problems:
            typer.echo(str(problem), err=True)  # plain: one problem per line, never wrapped
        raise typer.Exit(code=2) from None


def no_ledger(path: str) -> str:
    """Why a command that only reads or changes a ledger stops: opening a SQLite file that is not there would create an
    empty ledger, and every later `report` or `keys list` run there would read it as the gateway's, silently."""
    return (f"there is no ledger at {path} (none was created): is DRAFTGATE_DATA_DIR (or DATABASE_URL, or the "
            "config's database_url) the gateway's?")


def ledger_or_exit(settings: Settings, config: policies.GatewayConfig) -> Database:
    """The ledger database, opened and migrated; a database that cannot be used is one line and exit 1."""
    from ledger import Database, LedgerError

    try:
        # No data dir made here: a SQLite ledger makes its own folder, and only `serve` writes journals there
        # (report or keys on a config naming another database left an empty ./draftgate-data behind).
        db = Database(settings.resolved_database_url(config.database_url))
        db.migrate()
    except (LedgerError, OSError) as exc:
        err.print(f"[red]error:[/red] {plain(exc)}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    return db


def text_option(value: str | None) -> str | None:
    """Names stored in the ledger must be text: a non-UTF-8 argument arrives as lone surrogates."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise typer.BadParameter("is not valid UTF-8 text") from None
    return value


def non_empty_option(value: str) -> str:
    if not value.strip():
        raise typer.BadParameter("must not be empty")
    text_option(value)
    return value


def local_model_or_exit(config: policies.GatewayConfig, *, device_must_work: bool = True) -> list[str]:
    """The local checkpoint and the settings that depend on it (`first_canvas_length`, `max_model_len`), read
    from its config files without loading weights: `serve` refuses them before its server starts (inside it
    they fail with a traceback) and `check-config` reports them in the same words. The device depends on the
    machine, not the file: with `device_must_work` False its problem is returned as a warning instead."""
    if not config.local.enabled or config.local.backend != "transformers":
        return []  # a vLLM server loads its own checkpoint
    from gateway.services import engine_config
    from local_engine import EngineError
    from local_engine.checkpoint import check_checkpoint

    engine = engine_config(config)
    warnings = []
    try:
        if engine.device != "auto":  # "auto" always finds one; checking another imports torch and the model code
            from local_engine.loading import pick_device

            try:
                pick_device(engine.device)
            except EngineError as exc:
                if device_must_work:
                    raise
                warnings.append(f"local model: {exc} on this machine (serve would refuse it here)")
        check_checkpoint(engine)
    except EngineError as exc:
        err.print(f"[red]error:[/red] local model: {plain(exc)}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    return warnings


def classifier_or_exit(config: policies.GatewayConfig) -> None:
    """A rule on `p_hosted` needs the difficulty classifier's weights: `serve` loaded them inside its server (a
    traceback after 'listening on') and `check-config` said OK. Read here (not the embedding model) and refused
    as a config problem, located at the first such rule."""
    uses = [i for i, rule in enumerate(config.policies.rules) if rule.when.p_hosted is not None]
    if not uses:
        return
    from router.classifier import BUNDLED_WEIGHTS, ClassifierUnavailableError, Weights

    try:
        Weights.load(BUNDLED_WEIGHTS)
    except ClassifierUnavailableError as exc:
        problem = config.origin.problem(("policies", "rules", uses[0], "when", "p_hosted"),
                                        f"the difficulty classifier cannot be loaded: {exc}")
        err.print("[red]error:[/red] 1 problem(s) in the configuration")
        typer.echo(str(problem), err=True)
        raise typer.Exit(code=2) from None

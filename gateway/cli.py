"""The `draftgate` command line (typer)."""

from __future__ import annotations

import contextlib
import copy
import logging
import logging.config
import os
import signal
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

import policies
from gateway.cli_common import (
    ConfigOpt,
    classifier_or_exit,
    config_or_exit,
    console,
    err,
    ledger_or_exit,
    local_model_or_exit,
    no_ledger,
    plain,
    settings_or_exit,
    table_console,
    text_option,
)
from gateway.cli_keys import keys_app
from gateway.cli_router import route_app, router_app
from gateway.metrics_folder import share_metrics_between_workers

app = typer.Typer(help="draftgate: one OpenAI-compatible URL; local drafts, hosted escalations, a cost ledger.",
                  no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(keys_app, name="keys")
app.add_typer(route_app, name="route")
app.add_typer(router_app, name="router")


@app.command()
def version() -> None:
    """Print the installed version."""
    from gateway.app import _version

    console.print(f"draftgate {_version()}")


def _print_version(wanted: bool) -> None:
    if wanted:
        version()
        raise typer.Exit()


@app.callback()
def _root(show_version: Annotated[bool, typer.Option("--version", "-V", is_eager=True, callback=_print_version,
                                                     help="Print the installed version and exit.")] = False) -> None:
    """draftgate: one OpenAI-compatible URL; local drafts, hosted escalations, a cost ledger."""


@app.command("check-config")
def check_config(file: Annotated[Path, typer.Argument(help="the YAML file to check (default: the one serve reads)",
                                                      envvar="DRAFTGATE_CONFIG")]) -> None:
    """Validate a config file: every problem with file, line and field path; non-zero exit on errors."""
    config = config_or_exit(settings_or_exit(file))
    classifier_or_exit(config)
    from gateway.services import vector_size_mismatches

    warnings = ([str(p) for p in policies.lint(config)] + local_model_or_exit(config, device_must_work=False)
                + vector_size_mismatches(config))
    if config.local.enabled and config.local.backend == "vllm":
        typer.echo("note: local.backend is vllm: its servers load the checkpoint, so it is not checked here",
                   err=True)
    for problem in warnings:
        typer.echo(f"warning: {problem}", err=True)
    console.print(f"{plain(file)}: OK ({len(config.models)} hosted model(s), "
                  f"{len(config.policies.rules)} rule(s), {len(warnings)} warning(s))")


@app.command()
def serve(config: ConfigOpt = None,
          host: Annotated[str | None, typer.Option(help="bind address")] = None,
          port: Annotated[int | None, typer.Option(min=0, max=65535, help="port")] = None,
          workers: Annotated[int | None, typer.Option(help="worker processes (default: DRAFTGATE_WORKERS, 1)",
                                                      min=1)] = None) -> None:
    """Run the gateway (embedded defaults when no config is given)."""
    import uvicorn

    settings = settings_or_exit(config)
    level = logging.DEBUG if settings.log_level == "trace" else settings.log_level.upper()  # trace: uvicorn's own
    log_config = _log_config(level)
    logging.config.dictConfig(log_config)
    loaded = config_or_exit(settings)  # fail fast with precise errors before uvicorn starts
    for problem in policies.lint(loaded):  # what check-config warns about: a rule that never matches, a 503 ...
        typer.echo(f"warning: {problem}", err=True)
    classifier_or_exit(loaded)
    local_model_or_exit(loaded)
    host = host or settings.host
    port = settings.port if port is None else port  # 0 is a port: any free one
    workers = workers or settings.workers
    _check_address(host, port)
    ledger_or_exit(settings, loaded).dispose()
    if config is not None:
        os.environ["DRAFTGATE_CONFIG"] = str(config)
    metrics_lock = share_metrics_between_workers(settings) if workers > 1 else None  # held while serving
    console.print(f"draftgate listening on {_base_url(host, port)}", soft_wrap=True)
    try:
        with _sigterm_exits_zero():
            uvicorn.run("gateway.app:create_app", factory=True, host=host, port=port, workers=workers,
                        log_level=settings.log_level, log_config=log_config, loop="uvloop", http="httptools",
                        timeout_keep_alive=75, timeout_graceful_shutdown=settings.shutdown_timeout_s)
    finally:
        if metrics_lock is not None:
            metrics_lock.close()


def _log_config(level: str | int) -> dict[str, Any]:
    """uvicorn's logging plus draftgate's (root) handler, level and format. Given to uvicorn, which applies it in
    each `--workers` process too: set up only here, the workers had none of it (their INFO lines, such as journal
    recovery, were dropped and their warnings printed without time or level)."""
    import uvicorn.config

    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["draftgate"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    config["handlers"]["draftgate"] = {"class": "logging.StreamHandler", "formatter": "draftgate",
                                       "stream": "ext://sys.stderr"}
    config["root"] = {"handlers": ["draftgate"], "level": level}
    config["loggers"]["alembic.runtime.plugins"] = {"level": "WARNING"}  # a dozen lines of noise per start
    return config


@contextlib.contextmanager
def _sigterm_exits_zero() -> Iterator[None]:
    """uvicorn stops gracefully on SIGTERM (drain, ledger flush), then puts the previous handler back and raises
    the signal again: with the default one the process died by SIGTERM after a clean stop (exit 143 in docker,
    `Error` in Kubernetes, -15 to a supervisor), where `--workers N` exits 0. This handler ends it with 0."""
    def stopped(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _base_url(host: str, port: int) -> str:
    """The URL clients use: an IPv6 address in brackets (RFC 3986); port 0 is whichever one the OS picks."""
    netloc = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if port == 0:
        return f"http://{netloc}:<a free port: see uvicorn's 'running on' line>/v1"
    return f"http://{netloc}:{port}/v1"


def _check_address(host: str, port: int) -> None:
    """Binds the address once before anything starts: uvicorn would bind only after loading the app and
    the model, print its startup lines, and then fail with a traceback-like log."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:  # socket.gaierror too: an unknown host name
        err.print(f"[red]error:[/red] cannot listen on {plain(host)}:{port}: {plain(exc.strerror or exc)}",
                  markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def migrate(config: ConfigOpt = None) -> None:
    """Bring the ledger database to the newest schema (the gateway also does this at start)."""
    settings = settings_or_exit(config)
    ledger_or_exit(settings, config_or_exit(settings)).dispose()
    console.print("ledger schema is up to date")


class GroupBy(str, Enum):
    team = "team"
    key = "key"
    model = "model"
    provider_model = "provider_model"
    route = "route"
    day = "day"
    reason = "reason"
    rule = "rule"
    user = "user"


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def report(by: Annotated[GroupBy, typer.Option("--by", help=(
               "group rows by (model: the alias requested; provider_model: the model that answered; "
               "rule: the policy rule that routed it, '(default)' when none matched; user: the request's `user`, "
               "the app's own end user)"))
           ] = GroupBy.team,
           since: Annotated[str | None, typer.Option(
               help="start: a date/time or a span back from now (30d, 12h); default the 30 days before the end")
                            ] = None,
           until: Annotated[str | None, typer.Option(help="end (exclusive); default now")] = None,
           team: Annotated[str | None, typer.Option(help="only this team", callback=text_option)] = None,
           format: Annotated[Format, typer.Option("--format", help="table, csv or json")] = Format.table,
           config: ConfigOpt = None) -> None:
    """Costs, savings vs all-hosted, escalations and latency from the ledger."""
    from datetime import timedelta

    from gateway import report_render
    from ledger import missing_sqlite_file
    from ledger.reports import Reporter, ReportQuery, parse_moment

    settings = settings_or_exit(config)
    try:
        end = parse_moment(until) if until else None
        start = parse_moment(since) if since else (end - timedelta(days=30) if end else parse_moment("30d"))
        if end is not None and end <= start:
            raise ValueError(f"--until ({until}) is not after --since ({since})")
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    loaded = config_or_exit(settings)
    missing = missing_sqlite_file(settings.resolved_database_url(loaded.database_url))
    if missing is not None:  # opening it would create an empty ledger there, and every later report read zeros
        err.print(f"error: {no_ledger(missing)}", markup=False, soft_wrap=True)
        raise typer.Exit(code=1)
    db = ledger_or_exit(settings, loaded)
    result = Reporter(db).report(ReportQuery(group_by=by.value, since=start, until=end, team=team))
    db.dispose()
    if format is Format.table:
        wide = table_console()
        wide.print(report_render.as_table(result))
        if result.total.totals.unpriced:
            err.print(f"{result.total.totals.unpriced} request(s) have no known price: counted, not in the $ sums")
    elif format is Format.csv:
        typer.echo(report_render.as_csv(result), nl=False)
    else:
        typer.echo(report_render.as_json(result))


@app.command()
def demo(requests: Annotated[int, typer.Option(min=1, max=5000, help="how many requests to send")] = 60,
         data_dir: Annotated[Path | None, typer.Option(help="where the demo ledger goes (default: a temp dir)")] = None,
         keep_serving: Annotated[bool | None, typer.Option(help="keep the gateway up for the dashboard "
                                                           "(default: when run in a terminal)")] = None,
         port: Annotated[int | None, typer.Option(min=1, max=65535, help="gateway port (default: a free one)")]
         = None) -> None:
    """A tour: bundled local model + a SIMULATED hosted provider, a mixed workload, then the cost report."""
    import asyncio
    import tempfile
    import time
    from datetime import UTC, datetime

    from rich.panel import Panel

    from gateway import demo as tour
    from gateway import report_render
    from ledger import Database
    from ledger.reports import Reporter, ReportQuery

    settings_or_exit(None)  # a bad environment setting is one line here, not a traceback from inside the tour

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    folder = data_dir or Path(tempfile.mkdtemp(prefix="draftgate-demo-"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        typer.echo(f"error: --data-dir: {exc}", err=True)
        raise typer.Exit(code=2) from None
    console.print(Panel("The hosted models in this demo (gpt-4o, gpt-4o-mini) are a [b]SIMULATED provider[/b] on "
                        "127.0.0.1, priced from LiteLLM's cost map: no real API is called, nothing is billed.\n"
                        "Routine prompts are drafted by the bundled local DiffusionGemma and verified; hard ones "
                        "go hosted.", title="draftgate demo"), soft_wrap=False)
    console.print("starting the gateway (loading the local model)…")
    try:
        running = tour.start(folder, port)
    except RuntimeError as exc:  # e.g. the port is taken
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    try:
        # A --data-dir may hold earlier tours' rows: this tour's report waits for its own rows and covers only them.
        db = Database(f"sqlite:///{folder / 'ledger.db'}")
        before, started = db.count_records(), datetime.now(UTC)
        asyncio.run(tour.send(running.url, tour.workload(requests), console))
        deadline = time.monotonic() + 30
        while db.count_records() < before + requests and time.monotonic() < deadline:
            time.sleep(0.1)  # the ledger writer flushes in the background
        wide = table_console()
        for group_by in ("route", "team"):
            wide.print(report_render.as_table(Reporter(db).report(ReportQuery(group_by=group_by, since=started))))
        total = Reporter(db).report(ReportQuery(group_by="route", since=started)).total.as_dict()
        db.dispose()
        console.print(f"[b]savings vs all-hosted:[/b] ${total['savings_usd']:.6f} of ${total['all_hosted_usd']:.6f} "
                      f"({total['local_share']:.0%} served locally, {total['escalation_rate']:.0%} escalated)",
                      soft_wrap=True)
        console.print(f"ledger and config: {plain(folder)}")
        if keep_serving if keep_serving is not None else _interactive():
            console.print(f"dashboard: {running.url}/dashboard  (sign in with the master key {running.master})",
                          soft_wrap=True)
            console.print("serving until Ctrl-C…")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        else:  # the gateway stops below: its URL would be a dead link
            console.print("dashboard: not kept up (run `draftgate demo --keep-serving` to browse it)", soft_wrap=True)
    finally:
        running.stop()


def _interactive() -> bool:
    """Whether a person is at the terminal: stdin is one (a closed stdin, as under some CI runners and
    service managers, is None in Python: no one is there to press Ctrl-C)."""
    return sys.stdin is not None and sys.stdin.isatty()


def main() -> None:
    app(prog_name="draftgate")


if __name__ == "__main__":
    main()

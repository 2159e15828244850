"""`draftgate route explain` and `draftgate router score|train`: what the router decides, and its classifier."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from gateway.cli_common import (
    ConfigOpt,
    classifier_or_exit,
    config_or_exit,
    console,
    err,
    ledger_or_exit,
    plain,
    settings_or_exit,
    table_console,
)

if TYPE_CHECKING:
    from gateway.settings import Settings
    from ledger import KeyInfo
    from policies import GatewayConfig

route_app = typer.Typer(help="Inspect routing decisions.", no_args_is_help=True)
router_app = typer.Typer(help="The learned difficulty classifier.", no_args_is_help=True)
DEFAULT_DATA = Path("../shared/data/routellm")


@route_app.command("explain")
def route_explain(request_file: Annotated[Path, typer.Argument(
                      help="a chat (or completions) request body (JSON); - reads stdin")],
                  config: ConfigOpt = None,
                  team: Annotated[str | None, typer.Option(help="the caller's team")] = None,
                  key: Annotated[str | None, typer.Option(help="the caller's key name")] = None) -> None:
    """Show which rule a request matches, every condition checked, and the decision."""
    from gateway.explain import explain_request
    from ledger.reports import DEFAULT_RULE_LABEL

    settings = settings_or_exit(config)
    loaded = config_or_exit(settings)
    classifier_or_exit(loaded)
    virtual = None
    if key is not None and not any(k.name == key for k in loaded.keys):
        virtual = _virtual_key(settings, loaded, key)
    try:
        report = explain_request(loaded, request_file, team=team, key_name=key, virtual_key=virtual)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    table = Table("rule", "condition", "expected", "actual", "result")
    for c in report["explanation"]:
        table.add_row(*(plain(c[k]) for k in ("rule", "condition", "expected", "actual")),
                      "pass" if c["passed"] else "fail")
    table_console().print(table)
    console.print(f"matched rule: {plain(report['rule'] or DEFAULT_RULE_LABEL)}")
    typer.echo(f"decision: {report['decision']}")
    if report["p_hosted"] is not None:
        console.print(f"classifier p_hosted: {report['p_hosted']:.3f}")
    if report["refusal"] is not None:  # the request would not be served: a script sees it in the exit status
        typer.echo(f"error: {request_file}: the gateway would answer {report['refusal']}", err=True)
        raise typer.Exit(code=2)


def _virtual_key(settings: Settings, config: GatewayConfig, name: str) -> KeyInfo | None:
    """The live virtual key of that name in the gateway's ledger: its team and models decide, as in the gateway.
    Explained as a bare name (with a note) when there is none, or no ledger: a missing one is not created."""
    from ledger import KeyStore, missing_sqlite_file

    url = settings.resolved_database_url(config.database_url)
    missing = missing_sqlite_file(url)
    found = None
    if missing is None:
        db = ledger_or_exit(settings, config)
        try:
            found = next((k for k in KeyStore(db).list() if k.name == name and k.revoked_at is None
                          and not k.expired()), None)
        finally:
            db.dispose()
    if found is None:
        where = f"there is no ledger at {missing}" if missing else "nor a live virtual key in the ledger"
        err.print(f"note: no key named {name} in the config, {where}: explained as a key of that name with "
                  "--team's team and every model", markup=False, soft_wrap=True)
    return found


@router_app.command("score")
def router_score(input: Annotated[Path, typer.Option("--input", help="JSONL: {id, prompt, draft?} per line")],
                 output: Annotated[Path, typer.Option("--output", help="JSONL: {id, p_hosted} per line")],
                 weights: Annotated[Path | None, typer.Option(help="classifier .npz (default: bundled)")] = None,
                 ) -> None:
    """Score prompts (and optional drafts) with p_hosted, one output line per request line (blank lines are
    skipped), same order. The output may be a symlink, a FIFO or /dev/stdout; never the input."""
    from router.classifier import ClassifierUnavailableError, DifficultyClassifier
    from router.scoring import ScoreFileError, ScoreInputError, score_file, writes_to_stdout

    try:
        classifier = DifficultyClassifier.load(weights)
    except ClassifierUnavailableError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    try:
        count = score_file(input, output, classifier)
    except ScoreInputError as exc:
        typer.echo(f"error: {input}: {exc}", err=True)
        raise typer.Exit(code=2) from None
    except (ScoreFileError, OSError) as exc:  # ScoreFileError names the file itself; a bare OSError is neither
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    (err if writes_to_stdout(output) else console).print(f"scored {count} prompt(s) -> {plain(output)}")


@router_app.command("train")
def router_train(data: Annotated[Path, typer.Option(help="RouteLLM outcome data folder")] = DEFAULT_DATA,
                 out: Annotated[Path | None, typer.Option(help="where to write the .npz (default: replaces the bundled "
                                                          "weights, which the gateway loads)")] = None,
                 from_ledger: Annotated[bool, typer.Option("--from-ledger", help="add the gateway's own "
                                                           "verification outcomes")] = False,
                 config: ConfigOpt = None) -> None:
    """Train the difficulty classifier (the bundled weights come from this command)."""
    from ledger import LedgerError, missing_sqlite_file
    from router.classifier import BUNDLED_WEIGHTS
    from router.errors import TrainingDataError
    from router.training import train

    extra = []
    if from_ledger:
        from gateway.outcomes import ledger_outcomes

        settings = settings_or_exit(config)
        url = settings.resolved_database_url(config_or_exit(settings).database_url)
        fresh = missing_sqlite_file(url)
        try:
            extra = ledger_outcomes(url)
        except LedgerError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=1) from None
        if fresh is not None:  # trained without them, silently, over the bundled weights by default
            err.print(f"note: there is no ledger at {fresh}, so it adds no outcomes: is DRAFTGATE_DATA_DIR (or "
                      "DATABASE_URL, or the config's database_url) the gateway's?", markup=False, soft_wrap=True)
        console.print(f"{len(extra)} outcome(s) from the ledger")
    try:
        report = train(data, out or BUNDLED_WEIGHTS, extra_rows=extra)
    except (TrainingDataError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    console.print(f"trained on {report.rows} rows ({report.positives} needed hosted) -> {plain(report.weights_path)}")

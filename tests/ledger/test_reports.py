"""Reports: sums checked against hand-computed values, and the roll-up against a brute-force recount."""

from __future__ import annotations

import contextlib
import random
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, Table, insert, inspect, text

from ledger import Database, RequestRecord
from ledger.db import MIGRATIONS, RECORD_FIELDS
from ledger.reports import Reporter, ReportQuery
from ledger.rollup import (
    END_USER_KEY_CHARS,
    GROUP_COLUMNS,
    USER_GROUP_COLUMNS,
    aggregate,
    group_key,
    is_unreferenced,
    latency_bucket,
    quantile_ms,
    user_group_key,
)
from tests.ledger.conftest import BACKENDS, T0, record, unmigrated


def seeded() -> list[RequestRecord]:
    day2 = T0 + timedelta(days=1)
    return [
        record("r1", hosted_cost_usd=0.001, reference_cost_usd=0.001),
        record("r2", route="local", model_alias="local/dg", provider_model=None, hosted_cost_usd=None,
               local_cost_usd=0.0001, device_seconds=36.0, reference_cost_usd=0.002, latency_ms=200.0),
        record("r3", key_id="key_b", route="escalated", hosted_cost_usd=0.003, wasted_draft_usd=0.0002,
               device_seconds=7.2, reference_cost_usd=0.003, escalation_reason="json_schema: not valid JSON"),
        record("r6", status="error", status_code=502, hosted_cost_usd=None, reference_cost_usd=None,
               prompt_tokens=0, completion_tokens=0),
        record("r4", created_at=day2, team="ops", key_id="key_c", route="local", hosted_cost_usd=None,
               local_cost_usd=0.0003, device_seconds=3.6, reference_cost_usd=0.004),
        record("r5", created_at=day2, team="ops", key_id="key_c", model_alias="mystery", hosted_cost_usd=None,
               reference_cost_usd=None, unpriced=True, prompt_tokens=100, completion_tokens=100),
    ]


def by_group(db: Database, **kw: object) -> dict[str, dict[str, object]]:
    report = Reporter(db).report(ReportQuery(**kw))  # type: ignore[arg-type]
    return {row["group"]: row for row in report.as_dict()["rows"]} | {"total": report.as_dict()["total"]}


def test_report_by_team_matches_hand_computed_figures(db: Database) -> None:
    db.insert_records(seeded())
    rows = by_group(db, group_by="team")
    research, ops = rows["research"], rows["ops"]
    assert research["requests"] == 4 and research["errors"] == 1
    assert (research["local_requests"], research["hosted_requests"], research["escalated_requests"]) == (1, 2, 1)
    assert research["escalation_rate"] == pytest.approx(0.25)
    assert research["local_usd"] == pytest.approx(0.0001)
    assert research["hosted_usd"] == pytest.approx(0.004)
    assert research["wasted_draft_usd"] == pytest.approx(0.0002)
    assert research["cost_usd"] == pytest.approx(0.0043)
    assert research["all_hosted_usd"] == pytest.approx(0.006)
    assert research["savings_usd"] == pytest.approx(0.0017)
    assert research["device_hours"] == pytest.approx(43.2 / 3600)
    assert research["prompt_tokens"] == 30 and research["completion_tokens"] == 60
    assert research["unpriced_requests"] == 0
    assert ops["requests"] == 2 and ops["unpriced_requests"] == 1
    assert ops["cost_usd"] == pytest.approx(0.0003) and ops["savings_usd"] == pytest.approx(0.0037)
    assert ops["prompt_tokens"] == 110  # an unpriced row's tokens still count
    total = rows["total"]
    assert total["requests"] == 6 and total["savings_usd"] == pytest.approx(0.0054)
    assert total["unpriced_requests"] == 1
    assert 90 <= research["p50_latency_ms"] <= 110  # 100 ms, read off 20%-wide buckets
    assert 180 <= research["p99_latency_ms"] <= 220


def test_replays_do_not_count_twice(db: Database) -> None:
    db.insert_records(seeded())
    before = by_group(db, group_by="route")
    assert db.insert_records(seeded() + seeded()) == 0
    assert by_group(db, group_by="route") == before


def test_windows_and_filters(db: Database) -> None:
    db.insert_records(seeded())
    first_day = by_group(db, group_by="team", since=T0, until=T0 + timedelta(hours=1))
    assert set(first_day) == {"research", "total"} and first_day["research"]["requests"] == 4
    later = by_group(db, group_by="team", since=T0 + timedelta(minutes=1), until=T0 + timedelta(days=5))
    assert set(later) == {"ops", "total"} and later["ops"]["requests"] == 2
    only_ops = by_group(db, group_by="key", team="ops")
    assert set(only_ops) == {"key_c", "total"}
    days = by_group(db, group_by="day")
    assert days["2026-11-01"]["requests"] == 4 and days["2026-11-02"]["requests"] == 2
    reasons = by_group(db, group_by="reason")
    assert reasons["json_schema"]["requests"] == 1


def _brute_force(records: list[RequestRecord], since: datetime, until: datetime, team: str | None,
                 column: str = "team") -> dict:
    chosen = [r for r in records if since <= r.created_at < until and (team is None or r.team == team)]
    totals = {}
    columns, keyed = (USER_GROUP_COLUMNS, user_group_key) if column == "end_user" else (GROUP_COLUMNS, group_key)
    for key, t in aggregate(chosen, keyed).items():
        totals.setdefault(key[columns.index(column)], []).append(t)
    out = {}
    for group, parts in totals.items():
        requests = sum(t.requests for t in parts)
        cost = sum(t.local_usd + t.hosted_usd + t.wasted_usd for t in parts)
        out[group] = (requests, round(cost, 9), round(sum(t.reference_usd for t in parts) - cost, 9),
                      sum(t.prompt_tokens for t in parts), sum(t.unpriced for t in parts))
    return out


def _random_records(rng: random.Random, count: int = 400) -> list[RequestRecord]:
    """Six days of mixed traffic: teams, keys, routes, answering models and rules (None: the default route)."""
    records = []
    for i in range(count):
        route = rng.choice(["local", "hosted", "escalated"])
        unpriced = rng.random() < 0.05
        records.append(record(
            f"q{i}", created_at=T0 + timedelta(minutes=rng.randrange(0, 6 * 24 * 60)), team=rng.choice(["a", "b", None]),
            key_id=rng.choice(["k1", "k2", "k3"]), route=route,
            provider_model="dg-local" if route == "local" else rng.choice(["openai/gpt-4o", "anthropic/c", None]),
            prompt_tokens=rng.randrange(1, 500),
            completion_tokens=rng.randrange(1, 500), latency_ms=rng.uniform(1, 5000), unpriced=unpriced,
            hosted_cost_usd=None if route == "local" or unpriced else rng.uniform(0, 0.01),
            local_cost_usd=rng.uniform(0, 0.001) if route != "hosted" else None,
            wasted_draft_usd=rng.uniform(0, 0.001) if route == "escalated" else 0.0,
            reference_cost_usd=None if unpriced else rng.uniform(0, 0.02),
            rule=rng.choice(["routine-cascade", "tools-go-hosted", None]), end_user=rng.choice(["u1", "u2", None]),
            escalation_reason="regex: no match" if route == "escalated" else None))
    return records


def _report_figures(report) -> dict:
    """What `_brute_force` computes, read off a report's rows."""
    return {r.group: (r.totals.requests, round(r.totals.local_usd + r.totals.hosted_usd + r.totals.wasted_usd, 9),
                      round(r.totals.reference_usd - (r.totals.local_usd + r.totals.hosted_usd
                                                      + r.totals.wasted_usd), 9),
                      r.totals.prompt_tokens, r.totals.unpriced) for r in report.rows}


def _assert_agrees_with_a_brute_force_recount(db: Database, records: list[RequestRecord], rng: random.Random,
                                              windows: int = 12) -> None:
    for _ in range(windows):
        since = T0 + timedelta(minutes=rng.randrange(-600, 5 * 24 * 60))
        until = since + timedelta(minutes=rng.randrange(1, 4 * 24 * 60))
        team = rng.choice(["a", None])
        for group_by, column in (("team", "team"), ("provider_model", "provider_model"), ("rule", "rule"),
                                 ("user", "end_user")):
            report = Reporter(db).report(ReportQuery(group_by=group_by, since=since, until=until, team=team))
            assert _report_figures(report) == _brute_force(records, since, until, team, column), \
                (since, until, team, group_by)


def test_rollup_and_raw_edges_agree_with_a_brute_force_recount(db: Database) -> None:
    rng = random.Random(7)
    records = _random_records(rng)
    db.insert_records(records)
    _assert_agrees_with_a_brute_force_recount(db, records, rng)


def test_percentiles_from_buckets_are_within_ten_percent() -> None:
    rng = random.Random(3)
    values = sorted(rng.lognormvariate(5, 1.5) for _ in range(5000))
    histogram = [0] * 72
    for v in values:
        histogram[latency_bucket(v)] += 1
    for q in (0.5, 0.9, 0.99):
        exact = values[int(q * len(values)) - 1]
        assert abs(quantile_ms(histogram, q) - exact) / exact < 0.10


def test_unpriced_means_unknown_not_zero() -> None:
    assert not is_unreferenced(record("x", unpriced=True))  # its own price unknown: counted as unpriced
    assert is_unreferenced(record("y", reference_cost_usd=None))  # served, but the counterfactual is unknown
    assert not is_unreferenced(record("z", status="error", reference_cost_usd=None))  # failed, nothing to compare


def test_known_costs_without_a_reference_model_are_spend_not_unpriced(db: Database) -> None:
    """Without `reference_model` a local row has no all-hosted counterfactual; its cost is still real spend
    (it was dropped from every total, and reports said "no known price"); savings compare only the rest."""
    db.insert_records([
        record("local", route="local", hosted_cost_usd=None, local_cost_usd=0.002, reference_cost_usd=None),
        record("hosted", route="hosted", hosted_cost_usd=0.010, local_cost_usd=None, reference_cost_usd=0.010),
        record("mystery", route="hosted", hosted_cost_usd=None, local_cost_usd=None, reference_cost_usd=None,
               unpriced=True)])
    for query in (ReportQuery(group_by="route"),  # whole days from the roll-up, and a window of raw rows
                  ReportQuery(group_by="route", since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1))):
        total = Reporter(db).report(query).as_dict()["total"]
        assert total["cost_usd"] == pytest.approx(0.012) and total["local_usd"] == pytest.approx(0.002)
        assert total["unpriced_requests"] == 1 and total["unreferenced_requests"] == 1
        assert total["all_hosted_usd"] == pytest.approx(0.010) and total["savings_usd"] == pytest.approx(0.0)


def _downgraded(db: Database, revision: str) -> tuple[set[str], tuple[int, int]]:
    """The roll-up's columns and its summed requests and prompt tokens after downgrading to `revision`."""
    config = _migrations()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
        columns = {c["name"] for c in inspect(connection).get_columns("usage_daily")}
        folded = connection.execute(text("SELECT SUM(requests), SUM(prompt_tokens) FROM usage_daily")).one()
    return columns, (int(folded[0]), int(folded[1]))


def _migrations() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _seed_at_revision(db: Database, revision: str, records: list[RequestRecord] | None = None) -> None:
    """A ledger written by an older draftgate: its schema at `revision`, rows (the seeded ones) in its requests."""
    config = _migrations()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        requests = Table("requests", MetaData(), autoload_with=connection)  # as it was then: no later columns
        connection.execute(insert(requests), [{n: getattr(r, n) for n in RECORD_FIELDS if n in requests.c}
                                              for r in (seeded() if records is None else records)])


def test_upgrading_an_old_ledger_backfills_the_rollup(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path}/old.db")
    _seed_at_revision(db, "0001")
    db.migrate()
    assert by_group(db, group_by="team")["research"]["savings_usd"] == pytest.approx(0.0017)
    db.dispose()


def test_report_by_provider_model_groups_by_the_model_that_answered(db: Database) -> None:
    """`auto` answered locally, by a hosted model, and refused before any model: one alias, three models."""
    db.insert_records([
        record("l", model_alias="auto", route="local", provider_model="dg-local", hosted_cost_usd=None,
               local_cost_usd=0.0002),
        record("h", model_alias="auto", route="hosted", provider_model="openai/gpt-4o", hosted_cost_usd=0.003),
        record("x", model_alias="auto", route="none", provider_model=None, hosted_cost_usd=None, status="error",
               status_code=429)])
    for window in ({}, {"since": T0 - timedelta(hours=1), "until": T0 + timedelta(hours=1)}):  # roll-up, raw rows
        assert by_group(db, group_by="model", **window)["auto"]["requests"] == 3
        rows = by_group(db, group_by="provider_model", **window)
        assert set(rows) == {"dg-local", "openai/gpt-4o", "", "total"}, window
        assert rows["dg-local"]["local_usd"] == pytest.approx(0.0002) and rows["dg-local"]["local_requests"] == 1
        assert rows["openai/gpt-4o"]["hosted_usd"] == pytest.approx(0.003)
        assert rows[""]["label"] == "(none)" and rows[""]["errors"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrading_a_0004_ledger_keys_the_rollup_by_the_model_that_answered(backend: str, tmp_path) -> None:
    """0005 adds `provider_model` to the roll-up's key and fills it from the requests; its downgrade folds the
    models back together, so a report by alias reads the same before, after and back."""
    with contextlib.ExitStack() as stack:
        db = unmigrated(backend, tmp_path, stack)
        _seed_at_revision(db, "0004")
        db.migrate()
        rows = by_group(db, group_by="provider_model")  # whole days: read from the roll-up
        assert rows["openai/gpt-4o-mini"]["requests"] == 5 and rows[""]["requests"] == 1  # r2: local, no model
        assert rows["total"]["savings_usd"] == pytest.approx(0.0054)
        by_alias = by_group(db, group_by="model")
        columns, folded = _downgraded(db, "0004")
        assert "provider_model" not in columns and folded == (6, 140)
        db.migrate()
        assert by_group(db, group_by="model") == by_alias


def test_upgrading_a_0003_ledger_rebuilds_the_rollup_with_unreferenced_costs(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path}/old.db")
    local = record("l", route="local", hosted_cost_usd=None, local_cost_usd=0.002, reference_cost_usd=None)
    _seed_at_revision(db, "0003", [local])
    db.migrate()
    total = Reporter(db).report(ReportQuery(group_by="route")).as_dict()["total"]  # whole days: the roll-up
    assert total["local_usd"] == pytest.approx(0.002) and total["unreferenced_requests"] == 1
    db.dispose()


def test_report_values_are_plain_ints_and_floats(db: Database) -> None:
    """PostgreSQL returns SUM(BIGINT) as Decimal: reports must still be JSON-ready ints and floats."""
    import json

    db.insert_records(seeded())
    data = Reporter(db).report(ReportQuery(group_by="team")).as_dict()
    json.dumps(data)
    assert type(data["total"]["requests"]) is int and type(data["total"]["prompt_tokens"]) is int
    assert type(data["total"]["cost_usd"]) is float


def test_a_filter_on_no_team_counts_the_edge_days_too(db: Database) -> None:
    """team '' (how the roll-up and `group_by=team` name requests without a team, "(none)"): the whole days came
    from the roll-up, but the partial days at the window's edges matched no raw row (stored with a NULL team)."""
    db.insert_records([record(f"n{i}", team=None, created_at=T0 + timedelta(hours=8 * i)) for i in range(9)])
    window = {"since": T0 - timedelta(hours=1), "until": T0 + timedelta(days=2, hours=13)}  # partial days at both ends
    teamless = by_group(db, group_by="team", team="", **window)
    everyone = by_group(db, group_by="team", **window)
    assert teamless["total"]["requests"] == everyone[""]["requests"] == 8


def by_rule() -> list[RequestRecord]:
    """Three ways to be routed: a cascade rule, a rule that sends tools hosted, and no rule (the default route)."""
    day2 = T0 + timedelta(days=1)
    cascade = {"rule": "routine-cascade", "model_alias": "auto"}
    return [
        record("c1", **cascade, route="local", provider_model="dg-local", hosted_cost_usd=None, local_cost_usd=0.0001,
               device_seconds=3.6, reference_cost_usd=0.002),
        record("c2", **cascade, route="local", provider_model="dg-local", hosted_cost_usd=None, local_cost_usd=0.0001,
               device_seconds=3.6, reference_cost_usd=0.002),
        record("c3", **cascade, route="escalated", hosted_cost_usd=0.003, wasted_draft_usd=0.0002, device_seconds=7.2,
               reference_cost_usd=0.003, escalation_reason="min_confidence: step cap hit"),
        record("c4", **cascade, created_at=day2, route="escalated", hosted_cost_usd=0.003, wasted_draft_usd=0.0002,
               device_seconds=7.2, reference_cost_usd=0.003, escalation_reason="min_confidence: step cap hit"),
        record("t1", rule="tools-go-hosted", hosted_cost_usd=0.002, reference_cost_usd=0.002),
        record("t2", rule="tools-go-hosted", team="ops", key_id="key_c", created_at=day2, hosted_cost_usd=0.003,
               reference_cost_usd=0.003),
        record("d1", hosted_cost_usd=0.001, reference_cost_usd=0.001),
        record("d2", route="none", provider_model=None, status="error", status_code=429, hosted_cost_usd=None,
               reference_cost_usd=None, prompt_tokens=0, completion_tokens=0),  # refused by a budget: no route
    ]


def test_report_by_rule_matches_hand_computed_figures(db: Database) -> None:
    """What each rule costs, how much of it is served locally, how often it escalates and what it saves."""
    db.insert_records(by_rule())
    # whole days from the roll-up; a window whose days are all partial, from the raw rows alone
    for window in ({}, {"since": T0 - timedelta(hours=1), "until": T0 + timedelta(days=1, hours=1)}):
        report = Reporter(db).report(ReportQuery(group_by="rule", **window)).as_dict()  # type: ignore[arg-type]
        assert [r["group"] for r in report["rows"]] == ["routine-cascade", "tools-go-hosted", ""]  # by cost
        cascade, tools, default = report["rows"]
        assert (cascade["requests"], cascade["local_requests"], cascade["escalated_requests"]) == (4, 2, 2)
        assert cascade["local_share"] == pytest.approx(0.5) and cascade["escalation_rate"] == pytest.approx(0.5)
        assert cascade["local_usd"] == pytest.approx(0.0002) and cascade["hosted_usd"] == pytest.approx(0.006)
        assert cascade["wasted_draft_usd"] == pytest.approx(0.0004) and cascade["cost_usd"] == pytest.approx(0.0066)
        assert cascade["all_hosted_usd"] == pytest.approx(0.010) and cascade["savings_usd"] == pytest.approx(0.0034)
        assert cascade["device_hours"] == pytest.approx(21.6 / 3600)
        assert (tools["requests"], tools["hosted_requests"], tools["local_share"]) == (2, 2, 0.0)
        assert tools["cost_usd"] == pytest.approx(0.005) and tools["savings_usd"] == pytest.approx(0.0)
        assert default["label"] == "(default)" and cascade["label"] == "routine-cascade"
        assert (default["requests"], default["errors"], default["hosted_requests"]) == (2, 1, 1)
        assert default["local_share"] == 0.0 and default["cost_usd"] == pytest.approx(0.001)
        assert report["total"]["requests"] == 8 and report["total"]["savings_usd"] == pytest.approx(0.0034)
    ops = by_group(db, group_by="rule", team="ops")
    assert set(ops) == {"tools-go-hosted", "total"} and ops["tools-go-hosted"]["cost_usd"] == pytest.approx(0.003)


def _fill_rollup_without(connection, records: list[RequestRecord], absent: tuple[str, ...]) -> None:
    """The roll-up as an older gateway wrote it: the same sums, keyed without the `absent` columns."""
    kept = [i for i, c in enumerate(GROUP_COLUMNS) if c not in absent]
    folded: dict[tuple[str, ...], object] = {}
    for key, totals in aggregate(records).items():
        old_key = tuple(key[i] for i in kept)
        if old_key in folded:
            folded[old_key].merge(totals)  # type: ignore[attr-defined]
        else:
            folded[old_key] = totals
    table = Table("usage_daily", MetaData(), autoload_with=connection)
    keys = [GROUP_COLUMNS[i] for i in kept]
    assert not set(absent) & set(table.c.keys())
    connection.execute(insert(table), [dict(zip(keys, key, strict=True)) | totals.as_columns()  # type: ignore[attr-defined]
                                       for key, totals in folded.items()])


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrading_a_0006_ledger_groups_its_history_by_rule(backend: str, tmp_path) -> None:
    """0007 adds `rule` to the roll-up's key and refills it from the requests (replacing the rows a 0006 gateway
    rolled up, never adding to them); its downgrade folds the rules back together."""
    rng = random.Random(11)
    records = [replace(r, end_user=None) for r in _random_records(rng)]  # a 0006 ledger has no users
    with contextlib.ExitStack() as stack:
        db = unmigrated(backend, tmp_path, stack)
        _seed_at_revision(db, "0006", records)
        with db.engine.begin() as connection:
            _fill_rollup_without(connection, records, ("rule",))
        def by_team() -> dict:
            return _report_figures(Reporter(db).report(ReportQuery(group_by="team")))

        before = by_team()  # read from the old roll-up before the upgrade
        db.migrate()
        far = T0 + timedelta(days=30)
        rows = _report_figures(Reporter(db).report(ReportQuery(group_by="rule", since=T0 - timedelta(days=1),
                                                               until=far)))
        assert rows == _brute_force(records, T0 - timedelta(days=1), far, None, "rule")  # whole days: the roll-up
        assert set(rows) == {"routine-cascade", "tools-go-hosted", ""}
        assert by_team() == before  # refilled, not added to
        _assert_agrees_with_a_brute_force_recount(db, records, rng, windows=4)
        columns, folded = _downgraded(db, "0006")
        assert "rule" not in columns
        assert folded == (len(records), sum(r.prompt_tokens for r in records))
        assert by_team() == before
        db.migrate()
        assert by_group(db, group_by="rule", since=T0 - timedelta(days=1), until=far)["total"]["requests"] == 400


def test_report_by_user_matches_hand_computed_figures(db: Database) -> None:
    """What each of an app's end users (the request's `user`) costs; requests that named none are '(none)'; a name
    longer than the roll-up's key is grouped by its first END_USER_KEY_CHARS characters on whole and partial days."""
    long_name = "u" * 600
    day2 = T0 + timedelta(days=1)
    db.insert_records([
        record("a1", end_user="alice", hosted_cost_usd=0.002, reference_cost_usd=0.002),
        record("a2", end_user="alice", created_at=day2, route="local", provider_model="dg-local", hosted_cost_usd=None,
               local_cost_usd=0.0001, reference_cost_usd=0.003),
        record("b1", end_user="bob", team="ops", key_id="key_c", hosted_cost_usd=0.004, reference_cost_usd=0.004),
        record("n1", hosted_cost_usd=0.001, reference_cost_usd=0.001),
        record("l1", end_user=long_name, hosted_cost_usd=0.0005, reference_cost_usd=0.0005),
        record("l2", end_user=long_name[:END_USER_KEY_CHARS] + "x", created_at=day2, hosted_cost_usd=0.0005,
               reference_cost_usd=0.0005),
    ])
    stored = db.get_record("l1")
    assert stored is not None and stored.end_user == long_name[:512]  # the requests table keeps 512 characters
    assert stored.detail == {"truncated_fields": ["end_user"]}
    for window in ({}, {"since": T0 - timedelta(hours=1), "until": T0 + timedelta(days=1, hours=1)}):
        rows = by_group(db, group_by="user", **window)
        assert set(rows) == {"alice", "bob", "", "u" * END_USER_KEY_CHARS, "total"}
        alice = rows["alice"]
        assert (alice["requests"], alice["local_requests"], alice["hosted_requests"]) == (2, 1, 1)
        assert alice["cost_usd"] == pytest.approx(0.0021) and alice["savings_usd"] == pytest.approx(0.0029)
        assert rows["bob"]["cost_usd"] == pytest.approx(0.004) and rows[""]["label"] == "(none)"
        assert rows["u" * END_USER_KEY_CHARS]["requests"] == 2
        assert {r["p50_latency_ms"] for r in rows.values()} == {None}  # no latency kept by user, edges neither
    ops = by_group(db, group_by="user", team="ops")
    assert set(ops) == {"bob", "total"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrading_a_0007_ledger_keeps_its_history_and_groups_new_rows_by_user(backend: str, tmp_path) -> None:
    """0008 adds `end_user` to the requests and the end users' roll-up, filled from the requests (rows written
    before it named no user); the main roll-up is left as it was; its downgrade drops both."""
    rng = random.Random(5)
    records = [replace(r, end_user=None) for r in _random_records(rng)]
    with contextlib.ExitStack() as stack:
        db = unmigrated(backend, tmp_path, stack)
        _seed_at_revision(db, "0007", records)
        with db.engine.begin() as connection:
            _fill_rollup_without(connection, records, ())
        before = _report_figures(Reporter(db).report(ReportQuery(group_by="rule")))
        db.migrate()
        assert _report_figures(Reporter(db).report(ReportQuery(group_by="rule"))) == before
        far = T0 + timedelta(days=30)
        users = by_group(db, group_by="user", since=T0 - timedelta(days=1), until=far)
        assert set(users) == {"", "total"} and users[""]["requests"] == len(records)
        assert users[""]["cost_usd"] == pytest.approx(by_group(db, group_by="team", since=T0 - timedelta(days=1),
                                                               until=far)["total"]["cost_usd"])
        db.insert_records([record("new", end_user="carol", created_at=T0 + timedelta(days=2))])
        assert by_group(db, group_by="user", since=T0 - timedelta(days=1), until=far)["carol"]["requests"] == 1
        _, folded = _downgraded(db, "0007")
        assert folded == (len(records) + 1, sum(r.prompt_tokens for r in records) + 10)
        with db.engine.connect() as connection:
            assert "end_user" not in {c["name"] for c in inspect(connection).get_columns("requests")}
            assert not inspect(connection).has_table("usage_daily_user")
        db.migrate()
        assert by_group(db, group_by="user", since=T0 - timedelta(days=1), until=far)["total"]["requests"] == 401

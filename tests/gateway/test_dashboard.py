"""The dashboard in a real headless Chromium: login by cookie, figures equal to the seeded ledger's."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from ledger import RequestRecord
from tests.conftest import MASTER_KEY
from tests.gateway.test_reports_api import config
from tests.ledger.test_reports import seeded

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def recent(records: list[RequestRecord]) -> list[RequestRecord]:
    """The hand-computed seeded ledger, moved into the last few days."""
    shift = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2) - records[0].created_at
    return [RequestRecord(**{**r.__dict__, "created_at": r.created_at + shift, "finished_at": r.finished_at + shift})
            for r in records]


@pytest.fixture(scope="module")
def browser() -> Browser:
    if CHROMIUM is None:
        pytest.fail("Chromium is not installed (Debian package `chromium`; scripts/test.sh installs it in CI)")
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture
def gw(gateway_factory, tmp_path: Path):
    gateway = gateway_factory(config(tmp_path / "ledger.db"))
    gateway.services.db.insert_records(recent(seeded()))
    return gateway


def _login(browser: Browser, url: str, key: str):  # type: ignore[no-untyped-def]
    page = browser.new_page()
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(url) else None)
    page.goto(f"{url}/dashboard")
    page.fill("#key", key)
    page.click("#login")
    page.wait_for_load_state()
    return page, outside


def test_master_dashboard_shows_the_seeded_figures(browser: Browser, gw) -> None:
    page, outside = _login(browser, gw.url, MASTER_KEY)
    assert page.url == f"{gw.url}/dashboard"  # the key is never in the URL
    assert page.text_content("#kpi-spend") == "$0.0046"
    assert page.text_content("#kpi-all-hosted") == "$0.0100"
    assert page.text_content("#kpi-savings") == "$0.0054"
    assert page.text_content("#kpi-local-share") == "33%"
    assert page.text_content("#kpi-requests") == "6"
    assert page.text_content("#kpi-unpriced") == "1"
    assert page.text_content("#kpi-device-hours") == f"{43.2 / 3600 + 3.6 / 3600:.4f}"
    bars = page.query_selector_all("#spend-chart rect.bar")
    by_route: dict[str, float] = {}
    for bar in bars:
        by_route[bar.get_attribute("data-route")] = by_route.get(bar.get_attribute("data-route"), 0) + float(
            bar.get_attribute("data-usd"))
    assert by_route == pytest.approx({"local": 0.0004, "hosted": 0.001, "escalated": 0.0032})
    # Really drawn to scale, not just present in the DOM: pixel height proportional to dollars.
    scales = [bar.bounding_box()["height"] / float(bar.get_attribute("data-usd")) for bar in bars]
    assert max(scales) / min(scales) < 1.02, scales
    assert "json_schema" in page.text_content("#reasons")
    assert "research" in page.text_content("#top-teams") and "ops" in page.text_content("#top-teams")
    assert "local/dg" in page.text_content("#top-models")  # the alias asked for, and the model that answered
    assert "openai/gpt-4o-mini" in page.text_content("#top-provider-models")
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["draftgate_key"]["httpOnly"] and cookies["draftgate_key"]["sameSite"] == "Strict"
    assert outside == []  # nothing from a CDN or anywhere else
    page.click("text=Sign out")
    page.wait_for_load_state()
    assert page.query_selector("#key") is not None
    page.close()


def test_a_team_key_sees_only_its_team(browser: Browser, gw) -> None:
    page, _ = _login(browser, gw.url, "sk-research-123456")
    assert page.text_content("#kpi-requests") == "4"
    assert page.text_content("#kpi-savings") == "$0.0017"
    assert page.query_selector("#top-teams") is None
    page.close()


def test_keys_that_cannot_see_a_dashboard_are_refused(browser: Browser, gw) -> None:
    for key in ("sk-not-a-key-000", "sk-loner-1234567"):  # unknown; valid but in no team
        page, _ = _login(browser, gw.url, key)
        assert "cannot open the dashboard" in page.text_content("#login-error")
        assert page.query_selector("#kpi-spend") is None
        page.close()
    direct = httpx.get(f"{gw.url}/dashboard", cookies={"draftgate_key": "sk-not-a-key-000"})
    assert "kpi-spend" not in direct.text and "no longer valid" in direct.text


def test_a_login_post_with_more_fields_than_the_form_is_a_400_not_a_500(gw) -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    crowded = httpx.post(f"{gw.url}/dashboard/login", content="a=1&b=2&c=3&d=4&e=5&key=x", headers=form)
    assert crowded.status_code == 400 and "sign-in form" in crowded.text and "draftgate_key" not in crowded.cookies


def test_a_group_whose_price_is_unknown_is_shown_as_unpriced_not_as_0(gw) -> None:
    """The seeded `mystery` model has no known price: its row read "$0" spent and "$0" saved, and the ops team's
    read as if its one priced request were all it had spent, with nothing on the row to say otherwise."""
    import re

    signed_in = httpx.Client(base_url=gw.url)
    assert signed_in.post("/dashboard/login", data={"key": MASTER_KEY}).status_code == 303
    page = signed_in.get("/dashboard").text
    cells = {m[0]: m[1:] for m in re.findall(r"<tr><td>([^<]*)</td><td>[^<]*</td><td>[^<]*</td><td>([^<]*)</td>"
                                             r"<td>([^<]*)</td>", page)}
    assert cells["mystery"] == ("unpriced", "-"), cells
    assert cells["ops"] == ("$0.00030 + 1 unpriced", "$0.0037"), cells
    assert cells["research"] == ("$0.0043", "$0.0017"), cells  # every request priced: as before


def test_a_few_device_seconds_are_not_shown_as_0_device_hours(gw) -> None:
    """The tables printed device-hours with four decimals: a key whose local requests took 0.09 s on the device read
    0.0000, where the KPI above it, `draftgate report` and the API show 0.000025."""
    import re

    from tests.ledger.conftest import record

    gw.services.db.insert_records(recent([record("tiny", key_id="key_tiny", route="local", device_seconds=0.09,
                                                 hosted_cost_usd=None, local_cost_usd=0.0000025)]))
    signed_in = httpx.Client(base_url=gw.url)
    signed_in.post("/dashboard/login", data={"key": MASTER_KEY})
    rows = dict(re.findall(r"<tr><td>([^<]*)</td>(?:<td>[^<]*</td>){4}<td>([^<]*)</td></tr>",
                           signed_in.get("/dashboard").text))
    assert rows["key_tiny"] == "0.000025" and rows["key_a"] == "0.0100", rows

"""Schemathesis fuzzes every operation in the gateway's own OpenAPI schema over real HTTP.

Valid and invalid inputs (positive and negative generation), with and without the master key: the gateway
must never answer 5xx, and every error must be OpenAI-style JSON `{"error": {message, type, param, code}}`.
Examples per operation are bounded so the whole file runs in well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import MASTER_KEY, hosted_config
from tests.support.servers import serve_in_thread, simulator_server

MAX_EXAMPLES = 100  # per operation and mode: ~30 s in all on the 2-core CI box
ERROR_FIELDS = {"message", "type", "param", "code"}
UNSATISFIABLE = "unsatisfiable"
AUTH = {"authorization": f"Bearer {MASTER_KEY}"}


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One gateway (hosted aliases on the simulator, master key on) for every generated case."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp, simulator_server() as sim:
        mp.setenv("DRAFTGATE_TEST_MASTER", MASTER_KEY)
        mp.setenv("DRAFTGATE_TEST_UPSTREAM_KEY", "sk-upstream-secret-abc")
        config = tmp / "draftgate.yaml"
        config.write_text(hosted_config(sim.base_url))
        sim.state.record = False
        app = create_app(Settings(config=config, data_dir=tmp / "data", max_body_bytes=256 * 1024))
        with serve_in_thread(app) as url:
            yield url


def _check(response, where: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, f"{where}: {response.text[:300]}"
        assert set(body["error"]) == ERROR_FIELDS, f"{where}: {response.text[:300]}"
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert "Traceback" not in response.text


def _fuzz(operation, mode: GenerationMode) -> str | None:  # type: ignore[no-untyped-def]
    """Runs one operation's bounded examples; the shrunk failure, if any, as text."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              database=None, derandomize=True)
    def run(case) -> None:  # type: ignore[no-untyped-def]
        where = f"{case.method} {case.formatted_path} ({mode.value}) body={case.body!r:.400} query={case.query!r:.200}"
        _check(case.call(headers=AUTH, timeout=30), where + ", master key")
        _check(case.call(timeout=30), where + ", no key")
        if isinstance(case.body, dict) and "model" in case.body and "messages" in case.body:
            case.body["model"] = "gpt-4o-mini"  # a served alias: fuzzed fields reach the upstream path too
            _check(case.call(headers=AUTH, timeout=30), where + ", served alias")

    try:
        run()
    except Unsatisfiable:
        return UNSATISFIABLE  # nothing to make invalid: an operation without parameters or body
    except AssertionError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_every_operation_no_5xx_and_openai_style_errors(fuzz_gateway: str, mode: GenerationMode) -> None:
    # pytest 9 breaks schemathesis' lazy `from_fixture` parametrization; its strategies work as they are
    schema = schemathesis.openapi.from_url(fuzz_gateway + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    fuzzed = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {"POST /v1/chat/completions", "GET /v1/models", "POST /admin/keys", "GET /admin/keys",
            "DELETE /admin/keys/{key_id}", "GET /healthz", "GET /readyz", "GET /metrics"} <= fuzzed
    failures = {f"{op.method.upper()} {op.path}": _fuzz(op, mode) for op in operations}
    unsatisfiable = {name for name, text in failures.items() if text == UNSATISFIABLE}
    must_fuzz_invalid = {"POST /v1/chat/completions", "POST /admin/keys", "GET /admin/keys"}
    assert not unsatisfiable & must_fuzz_invalid, unsatisfiable
    failed = {name: text for name, text in failures.items() if text and text != UNSATISFIABLE}
    assert not failed, "\n\n".join(f"{name}:\n{text}" for name, text in failed.items())

"""Every verifier, passing and failing, with the reasons a refining model would be given."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from router.errors import VerifierConfigError
from router.verifiers import Draft, Verdict, build_verifier, run_verifiers

SIGNALS = {"steps_per_canvas": [6, 9], "step_cap_hit": False, "tokens_per_pass": 4.0, "mean_entropy": 0.05,
           "max_entropy": 0.6}


def draft(text: str, request: dict | None = None, signals: dict | None = SIGNALS) -> Draft:  # type: ignore[type-arg]
    return Draft(text=text, request=request or {"messages": [{"role": "user", "content": "q"}]}, signals=signals)


async def verify(kind: str, options: dict, text: str, **kw: object) -> Verdict:  # type: ignore[type-arg]
    return await build_verifier(kind, options).verify(draft(text, **kw))  # type: ignore[arg-type]


async def test_json() -> None:
    assert (await verify("json", {}, '{"a": [1, 2]}')).passed
    assert (await verify("json", {}, '```json\n{"a": 1}\n```')).passed
    bad = await verify("json", {}, '{"a": 1,\n "b": }')
    assert not bad.passed and bad.reason.startswith("invalid JSON at line 2 column")


async def test_json_schema_given_and_from_request() -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    assert (await verify("json_schema", {"schema": schema}, '{"age": 3}')).passed
    bad = await verify("json_schema", {"schema": schema}, '{"age": "x"}')
    assert not bad.passed and "$.age: 'x' is not of type 'integer'" in bad.reason
    request = {"messages": [], "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}}
    missing = await verify("json_schema", {"from_request": True}, "{}", request=request)
    assert not missing.passed and "'age' is a required property" in missing.reason
    fenced = '```json\n{"age": 3}\n```'  # fine for a rule's own schema; not what a response_format client parses
    assert (await verify("json_schema", {"schema": schema}, fenced)).passed
    assert not (await verify("json_schema", {"from_request": True}, fenced, request=request)).passed
    assert (await verify("json_schema", {"from_request": True}, '{"age": 3}', request=request)).passed
    as_object = {"messages": [], "response_format": {"type": "json_object"}}
    assert not (await verify("json_schema", {"from_request": True}, "[1]", request=as_object)).passed
    assert (await verify("json_schema", {"from_request": True}, "anything", request={"messages": []})).passed


async def test_a_schema_pattern_that_backtracks_cannot_stall_the_gateway() -> None:
    """jsonschema ran a request schema's `pattern` with `re`: `^(\\w+\\s?)*$` on 40 characters of a draft took
    hours, on the event loop. Patterns now run on the `regex` engine within the verifier's time limit."""
    schema = {"type": "object", "properties": {"city": {"type": "string", "pattern": r"^(\w+\s?)*$"}},
              "patternProperties": {r"^(\w+\s?)*$": {"type": "string"}}, "additionalProperties": False}
    request = {"messages": [], "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}}
    start = time.perf_counter()
    bad = await verify("json_schema", {"from_request": True}, json.dumps({"city": "a" * 40 + "!"}), request=request)
    assert not bad.passed and "does not match" in bad.reason and time.perf_counter() - start < 1
    assert (await verify("json_schema", {"schema": schema}, '{"city": "Oslo x"}')).passed
    keyed = await verify("json_schema", {"schema": schema}, json.dumps({"b" * 40 + "!": 1, "city": "Oslo"}))
    assert not keyed.passed and "does not match any of the regexes" in keyed.reason and time.perf_counter() - start < 2
    assert not (await verify("json_schema", {"schema": schema}, '{"city": "Oslo", "b c": 1}')).passed


async def test_unevaluated_properties_match_patterns_within_the_time_limit() -> None:
    """`unevaluatedProperties` beside `patternProperties` matched keys with `re` (seconds for this 27-character
    key, hours for a longer one, on the event loop); now on the `regex` engine, within the verifier's limit."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "patternProperties": {r"^(\d+\s?)*$": {"type": "integer"}}, "unevaluatedProperties": False}
    start = time.perf_counter()
    bad = await verify("json_schema", {"schema": schema}, json.dumps({"city": "Oslo", "1" * 26 + "!": 1}))
    assert not bad.passed and time.perf_counter() - start < 1
    assert (await verify("json_schema", {"schema": schema}, '{"city": "Oslo", "12 3": 1}')).passed
    odd = await verify("json_schema", {"schema": schema}, '{"city": "Oslo", "!": 1}')
    assert not odd.passed and "Unevaluated properties are not allowed ('!' was unexpected)" in odd.reason
    nested = {"allOf": [{"$ref": "#/$defs/named"}], "unevaluatedProperties": False,
              "$defs": {"named": {"patternProperties": {"^x-": True}}}}
    assert (await verify("json_schema", {"schema": nested}, '{"x-a": 1}')).passed
    assert not (await verify("json_schema", {"schema": nested}, '{"y": 1}')).passed


async def test_string_formats_are_checked() -> None:
    """jsonschema treats `format` as a note unless given a format checker: `"format": "date"` passed any string."""
    schema = {"type": "object", "properties": {
        "day": {"type": "string", "format": "date"}, "at": {"type": "string", "format": "date-time"},
        "mail": {"type": "string", "format": "email"}, "host": {"type": "string", "format": "hostname"},
        "id": {"type": "string", "format": "uuid"}, "site": {"type": "string", "format": "uri"}}}
    good = {"day": "2024-02-29", "at": "2024-02-29T10:00:00+01:00", "mail": "a@b.c", "host": "api.example.com",
            "id": "0b5e7b0e-95b4-4b8e-9f0e-2c7b2f0a9d1e", "site": "not checked"}
    assert (await verify("json_schema", {"schema": schema}, json.dumps(good))).passed
    bad = await verify("json_schema", {"schema": schema}, json.dumps(
        {"day": "next Tuesday", "at": "2024-02-29 10:00", "mail": "nobody", "host": "-x-.com", "id": "42"}))
    assert not bad.passed and "'next Tuesday' is not a 'date'" in bad.reason
    assert [e.split(":")[0] for e in bad.details["errors"]] == ["$.at", "$.day", "$.host", "$.id", "$.mail"]
    assert not (await verify("json_schema", {"schema": schema}, '{"day": "2023-02-29"}')).passed


async def test_a_schema_whose_ref_cannot_be_resolved_fails_the_draft_instead_of_raising() -> None:
    request = {"messages": [], "response_format": {"type": "json_schema", "json_schema": {
        "name": "p", "schema": {"$ref": "#/definitions/nowhere"}}}}
    verdict = await verify("json_schema", {"from_request": True}, '{"a": 1}', request=request)
    assert not verdict.passed and "$ref cannot be resolved" in verdict.reason and "nowhere" in verdict.reason


async def test_regex_modes_and_flags() -> None:
    assert (await verify("regex", {"pattern": r"^\d+$", "mode": "fullmatch"}, " 42 ")).passed
    miss = await verify("regex", {"pattern": r"^\d+$", "mode": "fullmatch"}, "42 apples")
    assert not miss.passed and "does not match" in miss.reason
    assert (await verify("regex", {"pattern": "POSITIVE", "flags": "i"}, "it is positive")).passed
    refusal = await verify("regex", {"pattern": "sorry", "flags": "i", "must_match": False}, "Sorry, I can't")
    assert not refusal.passed and "matches /sorry/" in refusal.reason
    assert (await verify("regex", {"pattern": "sorry", "flags": "i", "must_match": False}, "Here it is")).passed


async def test_a_regex_that_backtracks_without_end_fails_the_draft_in_bounded_time() -> None:
    started = time.monotonic()
    verdict = await verify("regex", {"pattern": r"^(a|aa)+$"}, "a" * 45 + "b")  # ~fib(45) steps without the timeout
    assert not verdict.passed and "timed out" in verdict.reason
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("options", "passed", "reason"), [
    ({"max_entropy": 1.0}, True, "confident"),
    ({"max_entropy": 0.5}, False, "max token entropy 0.600 > 0.5"),
    ({"max_mean_entropy": 0.01}, False, "mean token entropy 0.050 > 0.01"),
    ({"max_steps": 8}, False, "9 denoising steps > 8"),
    ({"min_tokens_per_pass": 8}, False, "4.00 tokens per pass < 8"),
])
async def test_min_confidence_thresholds(options: dict, passed: bool, reason: str) -> None:  # type: ignore[type-arg]
    verdict = await verify("min_confidence", options, "x")
    assert verdict.passed is passed and reason in verdict.reason


async def test_min_confidence_step_cap_and_missing_signals() -> None:
    capped = {**SIGNALS, "step_cap_hit": True}
    assert not (await verify("min_confidence", {}, "x", signals=capped)).passed
    assert (await verify("min_confidence", {"allow_step_cap": True}, "x", signals=capped)).passed
    none = await verify("min_confidence", {}, "x", signals=None)
    assert not none.passed and none.reason == "no confidence signals"
    assert none.judged is False  # (vLLM reports none): not evidence that the prompt needed the hosted model
    assert (await verify("min_confidence", {"missing": "pass"}, "x", signals=None)).passed


async def test_judge_parses_grades_and_fails_closed() -> None:
    replies = iter(["SCORE: 9", "I think it's fine", "SCORE: 3", "SCORE: 50"])

    async def judge(alias: str, messages: list[dict]) -> str:  # type: ignore[type-arg]
        assert alias == "gpt-4o-mini" and "Candidate answer:\nthe answer" in messages[0]["content"]
        return next(replies)

    verifier = build_verifier("judge", {"model": "gpt-4o-mini", "threshold": 0.7}, judge=judge)
    assert (await verifier.verify(draft("the answer"))).passed
    garbage = await verifier.verify(draft("the answer"))
    assert not garbage.passed and "no SCORE line" in garbage.reason
    low = await verifier.verify(draft("the answer"))
    assert not low.passed and "0.30" in low.reason
    off_scale = await verifier.verify(draft("the answer"))  # graded out of 100: 50 was taken as full marks
    assert not off_scale.passed and "not on the 0-10 scale" in off_scale.reason


async def test_run_verifiers_stops_on_first_failure_unless_asked() -> None:
    verifiers = [build_verifier("json", {}), build_verifier("regex", {"pattern": "x"})]
    assert len(await run_verifiers(verifiers, draft("nope"))) == 1
    assert len(await run_verifiers(verifiers, draft("nope"), stop_on_first_failure=False)) == 2


@pytest.mark.parametrize(("kind", "options"), [
    ("nope", {}), ("regex", {}), ("regex", {"pattern": "("}), ("json_schema", {}),
    ("json_schema", {"schema": {"type": "nonsense"}}), ("python_tests", {"tests": "assert ("}),
    ("judge", {"model": "m"}), ("min_confidence", {"missing": "maybe"}),
    # Tests that never run would pass every answer, an empty one too.
    ("python_tests", {"tests": "class TestAdd:\n    def test_add(self):\n        assert add(1, 2) == 3\n"}),
    ("python_tests", {"tests": "import unittest\nclass T(unittest.TestCase):\n    def test_a(self):\n"
                               "        self.assertEqual(add(1, 2), 3)\n"}),
    ("python_tests", {"tests": "def check():\n    assert add(1, 2) == 3\n\nif __name__ == '__main__':\n    check()\n"}),
    # An async or generator test function, called plainly, never runs its body: it passed an empty answer.
    ("python_tests", {"tests": "async def test_add():\n    assert add(1, 2) == 3\n"}),
    ("python_tests", {"tests": "def test_add():\n    yield\n    assert add(1, 2) == 3\n"}),
    # A test taking an argument (a pytest fixture) would fail every answer.
    ("python_tests", {"tests": "def test_add(capsys):\n    assert add(1, 2) == 3\n"}),
    # Tests that import what the sandbox lacks (no site-packages) would fail every answer.
    ("python_tests", {"tests": "import pytest\n\ndef test_div():\n    with pytest.raises(ZeroDivisionError):\n"
                               "        div(1, 0)\n"}),
    ("python_tests", {"tests": "def test_mean():\n    from numpy import mean\n    assert mean([1, 3]) == 2\n"}),
])
def test_misconfiguration_is_a_config_error(kind: str, options: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(VerifierConfigError):
        build_verifier(kind, options)


@pytest.mark.parametrize("tests", [
    "assert add(1, 2) == 3\n", "def check():\n    assert add(1, 2) == 3\n\ncheck()\n",
    "def test_add():\n    assert add(1, 2) == 3\n", "x = add(1, 2)\n",
    "import math\nfrom solution import add\nfrom collections.abc import Sequence\n\ndef test_add():\n"
    "    assert math.isclose(add(0.1, 0.2), 0.3)\n",
    "def test_add():\n    def pairs():\n        yield 1, 2\n    assert all(add(a, b) == 3 for a, b in pairs())\n",
    "def test_add(a=1, *, b=2):\n    assert add(a, b) == 3\n",
    "try:\n    import numpy\nexcept ImportError:\n    numpy = None\n\ndef test_add():\n    assert add(1, 2) == 3\n",
])
def test_python_tests_that_run_something_are_accepted(tests: str) -> None:
    assert build_verifier("python_tests", {"tests": tests}).name == "python_tests"


def test_verdicts_serialize() -> None:
    verdict = asyncio.run(verify("json", {}, "{}"))
    assert verdict.as_dict() == {"verifier": "json", "passed": True, "reason": "valid JSON", "details": {}}


@pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": Infinity}', '[-Infinity]', "[" * 100_000 + "]" * 100_000])
async def test_what_strict_json_parsers_refuse_fails_every_json_check(text: str) -> None:
    """Python's json takes NaN and Infinity, and overflows the stack on deep nesting (a 500 before)."""
    request = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}
    for kind, options in (("json", {}), ("json_schema", {"schema": {}}), ("json_schema", {"from_request": True})):
        verdict = await build_verifier(kind, options).verify(Draft(text=text, request=request))
        assert not verdict.passed and "invalid JSON" in verdict.reason, (kind, verdict)


async def test_a_backend_without_signals_counts_as_missing_not_as_confident() -> None:
    """A vLLM server reports no denoising signals: all-zero figures read as perfect confidence before."""
    from local_engine.vllm_backend import NO_SIGNALS

    assert NO_SIGNALS.as_dict() == {}
    verdict = await build_verifier("min_confidence", {"max_entropy": 0.02}).verify(
        Draft(text="x", request={}, signals=NO_SIGNALS.as_dict()))
    assert not verdict.passed and verdict.reason == "no confidence signals"


async def test_a_verifier_that_breaks_on_a_draft_fails_it_instead_of_raising() -> None:
    class Fragile:
        name = "fragile"

        async def verify(self, draft: Draft) -> Verdict:
            raise RecursionError("maximum recursion depth exceeded")

    (verdict,) = await run_verifiers([Fragile()], Draft(text="x", request={}))  # type: ignore[list-item]
    assert not verdict.passed and "could not judge" in verdict.reason

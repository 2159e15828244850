"""Cheap verifiers: JSON, JSON Schema, regex, the engine's confidence, and an LLM judge."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import referencing.exceptions
import regex

from policies import schema_problem
from router.usage import message_text
from router.verifiers.base import Draft, JudgeFn, JudgeReply, Verdict
from router.verifiers.bounded_schema import FORMATS, SCHEMA_DEADLINE, SCHEMA_REGEX_TIMEOUT_S, BoundedValidator

FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n\s*```\s*$", re.DOTALL)
MAX_SCHEMA_ERRORS = 5


def strip_fence(text: str) -> str:
    """A draft wrapped in one ```json fence is judged on its content (models often add one)."""
    match = FENCE.match(text)
    return match.group(1) if match else text


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259); strict parsers refuse it")


def parse_json(text: str, *, fenced: bool = True) -> tuple[Any, str | None]:
    """The JSON value of a draft (in one ```json fence when `fenced`), or why it is not JSON. NaN and Infinity
    are not (Python's json accepts them; JSON.parse, Go and serde refuse them), and nesting too deep to parse
    is a finding, not a crash."""
    try:
        return json.loads(strip_fence(text) if fenced else text, parse_constant=_no_constant), None
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
    except ValueError as exc:
        return None, f"invalid JSON: {exc}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply to parse"


class JsonVerifier:
    name = "json"

    async def verify(self, draft: Draft) -> Verdict:
        _, error = parse_json(draft.text)
        return Verdict(self.name, error is None, error or "valid JSON")


def schema_from_request(request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON Schema a request's `response_format` asks for; {"type": "object"} for json_object."""
    fmt = request.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else {}
    if fmt.get("type") == "json_object":
        return {"type": "object"}
    return None


class JsonSchemaVerifier:
    name = "json_schema"

    def __init__(self, schema: dict[str, Any] | None = None, from_request: bool = False) -> None:
        if schema is None and not from_request:
            raise ValueError("json_schema needs `schema` or `from_request: true`")
        if schema is not None and (problem := schema_problem(schema)) is not None:  # the config's own check
            raise ValueError(problem)
        self._schema = schema  # None: the request's response_format (from_request)

    @property
    def from_request(self) -> bool:
        """Checks the request's `response_format` (no schema of its own)."""
        return self._schema is None

    async def verify(self, draft: Draft) -> Verdict:
        schema = self._schema if self._schema is not None else schema_from_request(draft.request)
        if schema is None:
            return Verdict(self.name, True, "the request asks for no JSON format")
        # The request's own response_format is what its client parses: an answer in a ```json fence is not JSON.
        value, error = parse_json(draft.text, fenced=self._schema is not None)
        if error is not None:
            return Verdict(self.name, False, error)
        deadline = SCHEMA_DEADLINE.set(time.monotonic() + SCHEMA_REGEX_TIMEOUT_S)
        try:
            errors = sorted(BoundedValidator(schema, format_checker=FORMATS).iter_errors(value),
                            key=lambda e: list(e.absolute_path))
        except referencing.exceptions.Unresolvable as exc:  # config and request schemas are checked up front;
            # this is the last guard: the draft cannot be shown to match, so it does not pass (never a 500)
            return Verdict(self.name, False, f"the schema's $ref cannot be resolved: {exc}")
        except TimeoutError:
            return Verdict(self.name, False, f"the schema's patterns took over {SCHEMA_REGEX_TIMEOUT_S * 1000:g} ms "
                                             "on the answer (counted as a failure)", judged=False)
        finally:
            SCHEMA_DEADLINE.reset(deadline)
        if not errors:
            return Verdict(self.name, True, "matches the schema")
        found = [f"{e.json_path}: {e.message}" for e in errors[:MAX_SCHEMA_ERRORS]]
        more = f" (+{len(errors) - MAX_SCHEMA_ERRORS} more)" if len(errors) > MAX_SCHEMA_ERRORS else ""
        return Verdict(self.name, False, "schema: " + "; ".join(found) + more, {"errors": found})


FLAG_BITS = {"i": regex.IGNORECASE, "m": regex.MULTILINE, "s": regex.DOTALL}
REGEX_TIMEOUT_S = 0.1  # a pattern that backtracks without end fails the draft instead of stalling the gateway


class ResponseFormatVerifier(JsonSchemaVerifier):
    """The request's own `response_format`, checked wherever a local answer is served: the local model
    cannot constrain its decoding to a format, so an answer that does not match is never passed on."""

    name = "response_format"

    def __init__(self) -> None:
        super().__init__(from_request=True)

    @staticmethod
    def wanted(request: Mapping[str, Any]) -> bool:
        """The request asks for JSON (`json_object` or `json_schema`)."""
        return schema_from_request(request) is not None

    @staticmethod
    def applies(request: Mapping[str, Any], verifiers: Sequence[Any] = ()) -> bool:
        """The request asks for JSON and no verifier among `verifiers` already checks its format."""
        return ResponseFormatVerifier.wanted(request) and not any(
            isinstance(v, JsonSchemaVerifier) and v.from_request for v in verifiers)


class RegexVerifier:
    name = "regex"

    def __init__(self, pattern: str, flags: str = "", mode: str = "search", must_match: bool = True) -> None:
        if mode not in ("search", "fullmatch"):
            raise ValueError("regex mode is search or fullmatch")
        bits = 0
        for flag in flags:
            if flag not in FLAG_BITS:
                raise ValueError(f"unknown regex flag {flag!r} (use i, m, s)")
            bits |= FLAG_BITS[flag]
        self._regex = regex.compile(pattern, bits)
        self._mode, self._must_match = mode, must_match

    async def verify(self, draft: Draft) -> Verdict:
        text = draft.text.strip()
        try:
            matcher = self._regex.fullmatch if self._mode == "fullmatch" else self._regex.search
            found = matcher(text, timeout=REGEX_TIMEOUT_S) is not None
        except TimeoutError:
            return Verdict(self.name, False, f"/{self._regex.pattern}/ timed out after "
                                             f"{REGEX_TIMEOUT_S * 1000:g} ms on the answer (counted as a failure)",
                           judged=False)
        ok = found == self._must_match
        what = "matches" if found else "does not match"
        return Verdict(self.name, ok, f"the answer {what} /{self._regex.pattern}/ ({self._mode})")


class ConfidenceVerifier:
    """Thresholds on the local engine's own signals: steps used, step cap, entropy, tokens per pass."""

    name = "min_confidence"

    def __init__(self, max_entropy: float | None = None, max_mean_entropy: float | None = None,
                 max_steps: int | None = None, allow_step_cap: bool = False,
                 min_tokens_per_pass: float | None = None, missing: str = "fail") -> None:
        if missing not in ("pass", "fail"):
            raise ValueError("missing is pass or fail")
        self._max_entropy, self._max_mean = max_entropy, max_mean_entropy
        self._max_steps, self._allow_cap = max_steps, allow_step_cap
        self._min_tpp, self._missing = min_tokens_per_pass, missing

    async def verify(self, draft: Draft) -> Verdict:
        s = draft.signals
        if not s:
            # (a backend that reports none, such as vLLM: a failure that says nothing of the draft itself)
            return Verdict(self.name, self._missing == "pass", "no confidence signals", judged=False)
        problems = []
        if not self._allow_cap and s.get("step_cap_hit"):
            problems.append("the denoising step cap was hit (the model never converged)")
        if self._max_entropy is not None and s.get("max_entropy", 0.0) > self._max_entropy:
            problems.append(f"max token entropy {s['max_entropy']:.3f} > {self._max_entropy:g}")
        if self._max_mean is not None and s.get("mean_entropy", 0.0) > self._max_mean:
            problems.append(f"mean token entropy {s['mean_entropy']:.3f} > {self._max_mean:g}")
        steps = max(s.get("steps_per_canvas") or [0])
        if self._max_steps is not None and steps > self._max_steps:
            problems.append(f"{steps} denoising steps > {self._max_steps}")
        if self._min_tpp is not None and s.get("tokens_per_pass", 0.0) < self._min_tpp:
            problems.append(f"{s.get('tokens_per_pass', 0.0):.2f} tokens per pass < {self._min_tpp:g}")
        return Verdict(self.name, not problems, "; ".join(problems) or "confident", dict(s))


JUDGE_PROMPT = (
    "You grade answers. Conversation:\n{conversation}\n\nCandidate answer:\n{answer}\n\n{rubric}"
    "Reply with exactly one line: `SCORE: N` where N is an integer from 0 (wrong) to 10 (fully correct)."
)
SCORE = re.compile(r"SCORE:\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def _bill(reply: object) -> dict[str, Any]:
    """A judge call's bill as a verdict's details; none for a bare text (a judge that costs nothing, in tests)."""
    if not isinstance(reply, JudgeReply):
        return {}
    return {"cost_usd": reply.cost_usd, "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens}


class JudgeVerifier:
    """An LLM judge through a hosted alias; an unparsable grade fails the draft."""

    name = "judge"

    def __init__(self, model: str, judge: JudgeFn | None, threshold: float = 0.7, rubric: str = "") -> None:
        if judge is None:
            raise ValueError("judge verifier needs a hosted judge function")
        if not 0 <= threshold <= 1:
            raise ValueError("judge threshold is between 0 and 1")
        self._model, self._judge, self._threshold = model, judge, threshold
        self._rubric = f"Rubric: {rubric}\n\n" if rubric else ""

    async def verify(self, draft: Draft) -> Verdict:
        conversation = "\n".join(f"{m.get('role')}: {message_text(m)}" for m in draft.request.get("messages", []))
        prompt = JUDGE_PROMPT.format(conversation=conversation, answer=draft.text, rubric=self._rubric)
        try:
            reply = await self._judge(self._model, [{"role": "user", "content": prompt}])
        except Exception as exc:  # noqa: BLE001 - an unreachable judge cannot vouch for the draft
            spent = getattr(exc, "outcome", None)  # a call the provider charged though its answer was unusable
            return Verdict(self.name, False, f"judge {self._model} unavailable: {exc}", _bill(spent), judged=False)
        text = reply.text if isinstance(reply, JudgeReply) else reply
        billed = _bill(reply)  # which the cascade adds to the request's (the provider charges the judge's tokens)
        match = SCORE.search(text)
        if match is None:
            return Verdict(self.name, False, f"judge reply has no SCORE line: {text[:120]!r}", billed)
        grade = float(match.group(1))
        if grade > 10:  # "SCORE: 85" is a judge grading on another scale: 85/100 is not full marks
            return Verdict(self.name, False, f"judge reply's score {match.group(1)} is not on the 0-10 scale: "
                                             f"{text[:120]!r}", billed)
        score = grade / 10
        return Verdict(self.name, score >= self._threshold,
                       f"judge scored {score:.2f} (threshold {self._threshold:g})", {"score": score, **billed})

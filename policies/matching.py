"""Rule matching: first match wins, every evaluated condition is explained.

Rules read only the request's structure and the caller's identity (RequestFacts); instructions
inside prompt text can change which keyword or regex matches, never the policy itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import regex

from policies.conditions import ContentCondition, MessagesCondition, MetadataMatch, NumberCondition, When
from policies.schema import Action, PoliciesConfig, Rule


@dataclass(frozen=True)
class RequestFacts:
    """What rules can look at, built by the gateway from the request."""

    model: str
    key_name: str | None
    team: str | None
    metadata: Mapping[str, str]
    prompt_tokens: int
    roles: tuple[str, ...]
    message_count: int
    text: str
    has_tools: bool
    has_response_format: bool
    last_user_text: str = ""  # the last user message's text: what a `scope: last_user` content rule reads


@dataclass(frozen=True)
class ConditionResult:
    rule: str
    condition: str
    expected: str
    actual: str
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    """The matched rule (None = the default), its action, and why."""

    rule: str | None
    action: Action
    explanation: list[ConditionResult] = field(default_factory=list)
    p_hosted: float | None = None

    def summary(self) -> str:
        """One line for the `x-draftgate-rule` header."""
        name = self.rule or "default"
        passed = [f"{c.condition}={c.actual}" for c in self.explanation if c.rule == name and c.passed]
        return f"{name} ({', '.join(passed)})" if passed else name


def number_holds(cond: NumberCondition, value: float) -> bool:
    return ((cond.lt is None or value < cond.lt) and (cond.lte is None or value <= cond.lte)
            and (cond.gt is None or value > cond.gt) and (cond.gte is None or value >= cond.gte)
            and (cond.eq is None or value == cond.eq))


def describe_number(cond: NumberCondition) -> str:
    ops = (("<", cond.lt), ("<=", cond.lte), (">", cond.gt), (">=", cond.gte), ("==", cond.eq))
    return " and ".join(f"{op} {v:g}" for op, v in ops if v is not None)


def as_list(value: str | list[str] | None) -> list[str]:
    return [] if value is None else ([value] if isinstance(value, str) else list(value))


REGEX_TIMEOUT_S = 0.05  # per condition: a pattern that backtracks without end must not stall the gateway
REGEX_BUDGET_S = 0.1  # all of a request's rule regexes together (ten slow rules would be ten timeouts) ...
REGEX_FLOOR_S = 0.02  # ... but each still gets this much: slow rules must not let a client skip a cheap one


def bounded_search(pattern: regex.Pattern[str], text: str,
                   deadline: float | None = None) -> tuple[regex.Match[str] | None, bool]:
    """(match, timed out): a rule's regex runs on client text, so its time is bounded (`regex`'s timeout),
    and by the request's `deadline` (time.monotonic) for all its regexes together."""
    timeout = REGEX_TIMEOUT_S if deadline is None else min(REGEX_TIMEOUT_S,
                                                           max(REGEX_FLOOR_S, deadline - time.monotonic()))
    try:
        return pattern.search(text, timeout=timeout), False
    except TimeoutError:
        return None, True


class _Compiled:
    """A rule with its regexes compiled once at load."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        when = rule.when
        self.content_re = regex.compile(when.content.regex) if when.content and when.content.regex else None
        self.meta_re = {k: regex.compile(v.regex) for k, v in (when.metadata or {}).items()
                        if isinstance(v, MetadataMatch) and v.regex}


class PolicySet:
    """Ordered rules and a default action."""

    def __init__(self, config: PoliciesConfig) -> None:
        self.config = config
        self._rules = [_Compiled(r) for r in config.rules]
        self.needs_p_hosted = any(r.when.p_hosted is not None for r in config.rules)
        # Worth a worker thread: the classifier, or regexes on client text (up to REGEX_BUDGET_S per request)
        self.needs_thread = self.needs_p_hosted or any(c.content_re or c.meta_re for c in self._rules)

    def match(self, facts: RequestFacts, p_hosted: Callable[[], float] | None = None) -> Decision:
        """The first rule whose conditions all hold; the classifier is called at most once, lazily."""
        explanation: list[ConditionResult] = []
        score: list[float] = []
        deadline = time.monotonic() + REGEX_BUDGET_S

        def get_score() -> float | None:
            if not score and p_hosted is not None:
                score.append(float(p_hosted()))
            return score[0] if score else None

        for compiled in self._rules:
            if self._rule_holds(compiled, facts, get_score, explanation, deadline):
                return Decision(compiled.rule.name, compiled.rule.action, explanation, score[0] if score else None)
        return Decision(None, self.config.default, explanation, score[0] if score else None)

    def _rule_holds(self, compiled: _Compiled, facts: RequestFacts, get_score: Callable[[], float | None],
                    out: list[ConditionResult], deadline: float) -> bool:
        name = compiled.rule.name
        for condition, expected, actual, passed in _conditions(compiled, facts, get_score, deadline):
            out.append(ConditionResult(name, condition, expected, actual, passed))
            if not passed:
                return False
        return True


def _conditions(c: _Compiled, f: RequestFacts, get_score: Callable[[], float | None], deadline: float) -> Any:
    """Yields (condition, expected, actual, passed) lazily, in a fixed order, cheapest first."""
    w: When = c.rule.when
    for name, allowed, actual in (("model", w.model, f.model), ("team", w.team, f.team), ("key", w.key, f.key_name)):
        if allowed is not None:
            options = as_list(allowed)
            yield name, f"in {options}", str(actual), actual in options
    for flag, actual_flag in (("has_tools", f.has_tools), ("has_response_format", f.has_response_format)):
        expected_flag = getattr(w, flag)
        if expected_flag is not None:
            yield flag, str(expected_flag).lower(), str(actual_flag).lower(), actual_flag == expected_flag
    for key, want in (w.metadata or {}).items():
        value = f.metadata.get(key)
        if isinstance(want, str):
            yield f"metadata.{key}", f"== {want!r}", repr(value), value == want
        else:
            ok = value is not None and (want.in_ is None or value in want.in_)
            pattern = c.meta_re.get(key)
            found, timed_out = bounded_search(pattern, value or "", deadline) if pattern else (None, False)
            ok = ok and (pattern is None or found is not None)
            actual = f"{value!r} (regex timed out: no match)" if timed_out else repr(value)
            yield f"metadata.{key}", f"in {want.in_}" if want.in_ else f"~ /{want.regex}/", actual, ok
    if w.prompt_tokens is not None:
        yield "prompt_tokens", describe_number(w.prompt_tokens), str(f.prompt_tokens), number_holds(
            w.prompt_tokens, f.prompt_tokens)
    if w.messages is not None:
        yield from _message_conditions(w.messages, f)
    if w.content is not None:
        yield from _content_conditions(w.content, c, f, deadline)
    if w.p_hosted is not None:
        score = get_score()
        if score is None:
            yield "p_hosted", describe_number(w.p_hosted), "unavailable", False
        else:
            yield "p_hosted", describe_number(w.p_hosted), f"{score:.3f}", number_holds(w.p_hosted, score)


def _message_conditions(m: MessagesCondition, f: RequestFacts) -> Any:
    if m.count is not None:
        yield "messages.count", describe_number(m.count), str(f.message_count), number_holds(m.count, f.message_count)
    if m.roles is not None:
        present = sorted(set(f.roles))
        yield "messages.roles", f"subset of {sorted(m.roles)}", str(present), set(present) <= set(m.roles)


def _content_conditions(content: ContentCondition, c: _Compiled, f: RequestFacts, deadline: float) -> Any:
    text = f.last_user_text if content.scope == "last_user" else f.text
    where = " in the last user message" if content.scope == "last_user" else ""
    if c.content_re is not None:
        found, timed_out = bounded_search(c.content_re, text, deadline)
        actual = repr(found.group(0)[:40]) if found else (
            "timed out (its own or the request's regex time is up): no match" if timed_out else "no match")
        yield "content.regex", f"/{content.regex}/{where}", actual, bool(found)
    if content.keywords:
        lowered = text.lower()
        hits = [k for k in content.keywords if k.lower() in lowered]
        yield "content.keywords", f"any of {content.keywords}{where}", str(hits), bool(hits)

"""Rule matching, explanations, the lazy classifier score, and lint."""

from __future__ import annotations

import time

import pytest

import policies
from policies import PolicySet, RequestFacts

HEAD = "models:\n  - name: big\n    model: openai/gpt-4o\npolicies:\n  rules:\n"


def facts(**kw: object) -> RequestFacts:
    base: dict[str, object] = dict(model="auto", key_name="app", team="research", metadata={"task": "extract"},
                                   prompt_tokens=120, roles=("system", "user"), message_count=2,
                                   text="Extract the JSON field", has_tools=False, has_response_format=True)
    base.update(kw)
    return RequestFacts(**base)  # type: ignore[arg-type]


def policy(rules: str, default: str = "") -> PolicySet:
    text = HEAD + rules + (f"  default: {default}\n" if default else "")
    return PolicySet(policies.load_text(text, {}).policies)


@pytest.mark.parametrize(("when", "passing", "failing"), [
    ("{model: [auto, big]}", {}, {"model": "local/x"}),
    ("{team: research}", {}, {"team": "sales"}),
    ("{key: [app]}", {}, {"key_name": None}),
    ("{metadata: {task: extract}}", {}, {"metadata": {"task": "chat"}}),
    ("{metadata: {task: {in: [extract, sort]}}}", {}, {"metadata": {}}),
    ("{metadata: {task: {regex: '^ext'}}}", {}, {"metadata": {"task": "summarize"}}),
    ("{prompt_tokens: {lt: 200, gte: 100}}", {}, {"prompt_tokens": 200}),
    ("{messages: {count: {lte: 2}}}", {}, {"message_count": 3}),
    ("{messages: {roles: [system, user]}}", {}, {"roles": ("user", "tool")}),
    ("{content: {regex: '(?i)json'}}", {}, {"text": "hello"}),
    ("{content: {keywords: [field, column]}}", {}, {"text": "nothing here"}),
    ("{content: {regex: '^Sort', scope: last_user}}", {"text": "Be brief.\nSort: 2, 1", "last_user_text": "Sort: 2, 1"},
     {"text": "Sort: 2, 1\nthanks", "last_user_text": "thanks"}),
    ("{content: {keywords: [sort], scope: last_user}}", {"last_user_text": "Sort: 2, 1"}, {"text": "sort"}),
    ("{has_tools: false}", {}, {"has_tools": True}),
    ("{has_response_format: true}", {}, {"has_response_format": False}),
])
def test_each_condition(when: str, passing: dict, failing: dict) -> None:  # type: ignore[type-arg]
    rules = policy(f"    - name: r\n      when: {when}\n      action: {{hosted: big}}\n")
    assert rules.match(facts(**passing)).rule == "r"
    miss = rules.match(facts(**failing))
    assert miss.rule is None and miss.action.kind == "requested"
    assert miss.explanation[-1].passed is False


def test_a_rule_regex_that_backtracks_without_end_does_not_match_and_returns_quickly() -> None:
    """Client text meets the operator's regex: `regex`'s timeout bounds it (without one, ~fib(45) steps)."""
    started = time.monotonic()
    for when, hostile in (("{content: {regex: '^(a|aa)+$'}}", {"text": "a" * 45 + "!"}),
                          ("{metadata: {task: {regex: '^(b|bb)+$'}}}", {"metadata": {"task": "b" * 45 + "!"}})):
        rules = policy(f"    - name: r\n      when: {when}\n      action: {{hosted: big}}\n")
        miss = rules.match(facts(**hostile))
        assert miss.rule is None and "timed out" in miss.explanation[-1].actual
        assert rules.match(facts(text="aaaa", metadata={"task": "bb"})).rule == "r"
    assert time.monotonic() - started < 5


def test_ten_catastrophic_rules_share_one_regex_budget_per_request() -> None:
    """Each rule's own timeout is 50 ms; ten such rules on one request were ~1 s of matching."""
    rules = policy("".join(f"    - name: r{i}\n      when: {{content: {{regex: '^(a|aa)+$'}}}}\n"
                           "      action: {hosted: big}\n" for i in range(10))
                   + "    - name: cheap\n      when: {content: {regex: 'SECRET'}}\n      action: local\n")
    assert rules.needs_thread  # regexes on client text are matched off the event loop
    started = time.monotonic()
    decision = rules.match(facts(text="a" * 60 + "! SECRET"))
    assert time.monotonic() - started < 0.8  # the budget, then a 20 ms floor each (was ~1 s)
    assert all("timed out" in c.actual for c in decision.explanation[:10])
    assert decision.rule == "cheap"  # the slow rules spent the budget; a cheap one is still evaluated
    assert not policy("    - name: plain\n      when: {team: a}\n      action: local\n").needs_thread


def test_first_match_wins_and_explains() -> None:
    rules = policy("    - name: first\n      when: {team: sales}\n      action: local\n"
                   "    - name: second\n      when: {team: research, has_tools: false}\n      action: {hosted: big}\n"
                   "    - name: third\n      action: local\n")
    decision = rules.match(facts())
    assert decision.rule == "second" and decision.action.kind == "hosted"
    assert [(c.rule, c.condition, c.passed) for c in decision.explanation] == [
        ("first", "team", False), ("second", "team", True), ("second", "has_tools", True)]
    assert decision.summary() == "second (team=research, has_tools=false)"


def test_p_hosted_is_lazy_and_computed_once() -> None:
    calls = []

    def score() -> float:
        calls.append(1)
        return 0.8

    rules = policy("    - name: cheap\n      when: {team: sales}\n      action: local\n"
                   "    - name: hard\n      when: {p_hosted: {gt: 0.7}}\n      action: {hosted: big}\n"
                   "    - name: easy\n      when: {p_hosted: {lte: 0.7}}\n      action: local\n")
    assert rules.needs_p_hosted
    assert rules.match(facts(team="sales"), score).rule == "cheap" and calls == []
    decision = rules.match(facts(), score)
    assert decision.rule == "hard" and decision.p_hosted == 0.8 and calls == [1]
    assert rules.match(facts(), lambda: 0.2).rule == "easy"


def test_lint_reports_shadowed_rules_only_when_certain() -> None:
    config = policies.load_text(HEAD + (
        "    - name: wide\n      when: {prompt_tokens: {lt: 1000}, team: [a, b]}\n      action: local\n"
        "    - name: narrow\n      when: {prompt_tokens: {lt: 500}, team: a}\n      action: {hosted: big}\n"
        "    - name: other\n      when: {prompt_tokens: {lt: 2000}, team: a}\n      action: local\n"
        "    - name: all\n      action: local\n"
        "    - name: dead\n      when: {has_tools: true}\n      action: local\n"), {})
    messages = [p.message for p in policies.lint(config)]
    assert messages == [
        "rule 'narrow' is unreachable: rule 'wide' before it matches every request it would match",
        "rule 'dead' is unreachable: rule 'all' before it matches every request it would match",
    ]


def test_lint_knows_a_last_user_scope_is_narrower_text_but_not_a_narrower_regex() -> None:
    config = policies.load_text(HEAD + (
        "    - name: kw-all\n      when: {content: {keywords: [sort]}}\n      action: local\n"
        "    - name: kw-last\n      when: {content: {keywords: [sort], scope: last_user}}\n      action: local\n"
        "    - name: re-all\n      when: {content: {regex: '^Sort'}}\n      action: local\n"
        "    - name: re-last\n      when: {content: {regex: '^Sort', scope: last_user}}\n      action: local\n"), {})
    assert [p.message for p in policies.lint(config)] == [
        "rule 'kw-last' is unreachable: rule 'kw-all' before it matches every request it would match"]

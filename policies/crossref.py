"""Checks across a validated config: names that must be unique, aliases and teams that must exist."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from policies.errors import ConfigProblem
from policies.schema import AUTO_ALIAS, CascadeAction, GatewayConfig, HostedAction
from policies.source import Located, Path

RESERVED_ALIASES = frozenset({AUTO_ALIAS})


def cross_reference_problems(config: GatewayConfig, source: Located) -> list[ConfigProblem]:
    """Every problem no single field shows: duplicates, unknown aliases, undeclared teams."""
    problems: list[ConfigProblem] = []
    known = set(config.model_names())
    repeated = dict(_repeats(config.model_names()))
    for i, model in enumerate(config.models):
        name = source.shown(("models", i, "name"), model.name)
        if i in repeated:
            problems.append(source.problem(("models", i, "name"), f"duplicate alias {name}"))
        if model.name in RESERVED_ALIASES or model.name == config.local.alias:
            problems.append(source.problem(("models", i, "name"), f"alias {name} is reserved"))
        for j, fallback in enumerate(model.fallbacks):
            where = ("models", i, "fallbacks", j)
            if fallback == model.name:
                problems.append(source.problem(where, f"model {name} cannot fall back to itself"))
            elif fallback not in known:
                problems.append(source.problem(where, f"unknown fallback alias {source.shown(where, fallback)}"))
    if config.local.alias in RESERVED_ALIASES:  # `auto` lets the policy choose: it cannot also name one model
        problems.append(source.problem(("local", "alias"), f"alias {config.local.alias!r} is reserved"))
    if config.reference_model is not None and config.reference_model not in known:
        problems.append(source.problem(("reference_model",), "unknown model alias "
                                       f"{source.shown(('reference_model',), config.reference_model)}"))
    problems += _duplicates(config, source)
    teams = {t.name for t in config.teams}
    requestable = set(config.requestable_aliases())
    routed = requestable | {config.local.alias}  # disabled, its requests still reach the rules (one may send them on)
    for i, key in enumerate(config.keys):
        if key.team is not None and key.team not in teams:  # with no `teams:` section too: none is declared
            problems.append(source.problem(("keys", i, "team"), f"team {source.shown(('keys', i, 'team'), key.team)} "
                                                                "is not declared in teams"))
        for j, alias in enumerate(key.models or ()):
            if alias not in routed:
                where = ("keys", i, "models", j)
                problems.append(source.problem(where, f"unknown model alias {source.shown(where, alias)}"))
    problems += _action_problems(config.policies.default, ("policies", "default"), known, source)
    for i, rule in enumerate(config.policies.rules):
        problems += _condition_aliases(rule.when.model, ("policies", "rules", i, "when", "model"), routed, source)
        problems += _action_problems(rule.action, ("policies", "rules", i, "action"), known, source)
    return problems


def _condition_aliases(model: str | list[str] | None, path: Path, routed: set[str],
                       source: Located) -> list[ConfigProblem]:
    """A `model` condition names what clients request; a request for an alias the gateway does not know is refused
    before rules are matched, so a condition on one (a typo) never holds."""
    paths = [(path, model)] if isinstance(model, str) else [(path + (j,), a) for j, a in enumerate(model or ())]
    return [source.problem(where, f"unknown model alias {source.shown(where, alias)} (requests for it are refused "
                                  "before any rule is matched, so this never holds)") for where, alias in paths
            if alias not in routed]


def _repeats(values: Iterable[str]) -> list[tuple[int, int]]:
    """(index, index of its first occurrence) of each value seen before."""
    first: dict[str, int] = {}
    out = []
    for i, value in enumerate(values):
        if value in first:
            out.append((i, first[value]))
        else:
            first[value] = i
    return out


def _duplicates(config: GatewayConfig, source: Located) -> list[ConfigProblem]:
    """Names that identify something (in headers, the ledger, reports) and secrets that identify a key."""
    out = []
    named: tuple[tuple[Path, str, list[str]], ...] = (
        (("teams",), "team", [t.name for t in config.teams]),
        (("keys",), "key name", [k.name for k in config.keys]),
        (("policies", "rules"), "rule name", [r.name for r in config.policies.rules]),
    )
    for section, what, names in named:
        for i, first in _repeats(names):
            shown = source.shown(section + (i, "name"), names[i])
            out.append(source.problem(section + (i, "name"), f"duplicate {what} {shown} "
                                                             f"(first on line {source.line_of(section + (first,))})"))
    for i, first in _repeats(k.key for k in config.keys):  # never echoed: it is the secret
        out.append(source.problem(("keys", i, "key"), f"the same secret as keys[{first}] (line "
                                                      f"{source.line_of(('keys', first))}): each key needs its own"))
    for i, key in enumerate(config.keys):  # the master key is checked first: this one would be the admin
        if key.key == config.master_key:
            out.append(source.problem(("keys", i, "key"), f"the same secret as master_key (line "
                                                          f"{source.line_of(('master_key',))}): a request with it is "
                                                          "the admin, and this key's team, limits and models never "
                                                          "apply"))
    return out


def _action_problems(action: Any, path: Path, known: set[str], source: Located) -> list[ConfigProblem]:
    out = []
    if isinstance(action, HostedAction) and action.alias not in known:
        out.append(source.problem(path + ("hosted",),
                                  f"unknown model alias {source.shown(path + ('hosted',), action.alias)}"))
    if isinstance(action, CascadeAction):
        base = path + ("cascade",)
        if action.escalate_to not in known:
            where = base + ("escalate_to",)
            out.append(source.problem(where, f"unknown model alias {source.shown(where, action.escalate_to)}"))
        for j, spec in enumerate(action.verifiers):
            judge_model = spec.options.get("model") if spec.kind == "judge" else None
            if spec.kind == "judge" and judge_model not in known:
                where = base + ("verifiers", j, "judge", "model")
                out.append(source.problem(where, f"unknown model alias {source.shown(where, str(judge_model))}"))
    return out

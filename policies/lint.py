"""Static checks on a loaded config: rules that can never match because an earlier rule always wins or they
name an undeclared team, conditions that check nothing, actions that send requests to a local model the config
disables, and budget periods without a budget."""

from __future__ import annotations

import math
from typing import Any

from policies.conditions import MetadataMatch, NumberCondition, When
from policies.errors import ConfigProblem
from policies.matching import as_list
from policies.schema import GatewayConfig
from policies.source import Origin, Path

Interval = tuple[float, bool, float, bool]  # low, low inclusive, high, high inclusive


def _interval(c: NumberCondition) -> Interval:
    low, low_inc, high, high_inc = -math.inf, False, math.inf, False
    for value, inclusive in ((c.gt, False), (c.gte, True), (c.eq, True)):
        if value is not None and (value > low or (value == low and not inclusive)):
            low, low_inc = value, inclusive
    for value, inclusive in ((c.lt, False), (c.lte, True), (c.eq, True)):
        if value is not None and (value < high or (value == high and not inclusive)):
            high, high_inc = value, inclusive
    return low, low_inc, high, high_inc


def _inside(inner: NumberCondition | None, outer: NumberCondition | None) -> bool:
    """Every value satisfying `inner` satisfies `outer` (None outer = no constraint)."""
    if outer is None:
        return True
    if inner is None:
        return False
    il, ili, ih, ihi = _interval(inner)
    ol, oli, oh, ohi = _interval(outer)
    low_ok = il > ol or (il == ol and (oli or not ili))
    high_ok = ih < oh or (ih == oh and (ohi or not ihi))
    return low_ok and high_ok


def _metadata_implied(later: When, earlier: When) -> bool:
    for key, want in (earlier.metadata or {}).items():
        have = (later.metadata or {}).get(key)
        if have is None:
            return False
        if isinstance(want, str):
            if have != want:
                return False
        elif isinstance(have, str):
            if want.regex is not None or (want.in_ is not None and have not in want.in_):
                return False
        elif not (isinstance(have, MetadataMatch) and have == want):
            return False
    return True


def implies(later: When, earlier: When) -> bool:
    """True only when certain: any request matching `later` also matches `earlier`."""
    for name in ("model", "team", "key"):
        wanted = getattr(earlier, name)
        if wanted is not None:
            have = getattr(later, name)
            if have is None or not set(as_list(have)) <= set(as_list(wanted)):
                return False
    for flag in ("has_tools", "has_response_format"):
        if getattr(earlier, flag) is not None and getattr(later, flag) != getattr(earlier, flag):
            return False
    if not (_inside(later.prompt_tokens, earlier.prompt_tokens) and _inside(later.p_hosted, earlier.p_hosted)):
        return False
    if earlier.messages is not None:
        lm = later.messages
        if earlier.messages.count is not None and not _inside(lm.count if lm else None, earlier.messages.count):
            return False
        if earlier.messages.roles is not None and (lm is None or lm.roles is None
                                                   or not set(lm.roles) <= set(earlier.messages.roles)):
            return False
    if earlier.content is not None:
        lc = later.content
        if earlier.content.regex is not None and (lc is None or lc.regex != earlier.content.regex
                                                  or lc.scope != earlier.content.scope):
            return False  # an anchored regex that matches the last user message may not match all text
        if earlier.content.keywords and (lc is None or not lc.keywords
                                         or not set(lc.keywords) <= set(earlier.content.keywords)
                                         or earlier.content.scope not in ("all", lc.scope)):
            return False  # a keyword in the last user message is in all text, not the other way round
    return _metadata_implied(later, earlier)


def lint(config: GatewayConfig, filename: str | None = None) -> list[ConfigProblem]:
    """Warnings that do not stop loading: unreachable (shadowed) rules, located like errors (FILE:LINE: path)
    when the config was loaded from a file; `filename` only renames the file."""
    origin = config.origin if filename is None else Origin(filename, config.origin.lines, config.origin.env_names)
    problems = []
    rules = config.policies.rules
    for j, later in enumerate(rules):
        for earlier in rules[:j]:
            if implies(later.when, earlier.when):
                problems.append(origin.problem(("policies", "rules", j),
                                               f"rule {later.name!r} is unreachable: rule {earlier.name!r} "
                                               f"before it matches every request it would match"))
                break
    for j, rule in enumerate(rules):  # `content: {scope: last_user}` alone checks nothing, as `when: {}` does
        for name, given in (("content", ("regex", "keywords")), ("messages", ("count", "roles"))):
            condition = getattr(rule.when, name)
            if condition is not None and all(getattr(condition, field) is None for field in given):
                problems.append(origin.problem(("policies", "rules", j, "when", name), f"gives no {given[0]} or "
                                               f"{given[1]}, so it checks nothing: every request passes it"))
    declared = {team.name for team in config.teams}  # when any is, a key's team must be one of them
    for j, rule in enumerate(rules if declared else ()):
        listed = isinstance(rule.when.team, list)
        for k, team in enumerate(as_list(rule.when.team)):
            where = ("policies", "rules", j, "when", "team") + ((k,) if listed else ())
            if team not in declared:
                problems.append(origin.problem(where, f"team {origin.shown(where, team)} is not declared in teams, "
                                                      "as every key's team must be: only a virtual key made before "
                                                      "teams were declared can match it"))
    if not config.local.enabled:  # valid, but every request it sends to the local model gets a 503
        catch_all = any(implies(When(), rule.when) for rule in rules)  # then the default never serves a request
        actions: list[tuple[Path, Any]] = [] if catch_all else [(("policies", "default"), config.policies.default)]
        actions += [(("policies", "rules", j, "action"), rule.action) for j, rule in enumerate(rules)]
        for path, action in actions:
            if action.kind == "local":
                problems.append(origin.problem(path, "sends requests to the local model, but local.enabled is "
                                                     "false: they get a 503 local_unavailable"))
            elif action.kind == "requested":  # `auto` names no model: it falls back to the local one
                problems.append(origin.problem(path, "serves requests for `auto` with the local model, but "
                                                     "local.enabled is false: they get a 503 local_unavailable"))
    for section, entries in (("teams", config.teams), ("keys", config.keys)):
        for i, entry in enumerate(entries):  # as `keys create --budget-period` without a budget is refused
            if "budget_period" in entry.model_fields_set and entry.max_budget_usd is None:
                problems.append(origin.problem((section, i, "budget_period"), "has no max_budget_usd beside it: "
                                               "without a budget a period limits nothing"))
    for name in ("api_base", "api_key"):  # the in-process model would serve the local route
        if config.local.backend != "vllm" and getattr(config.local, name) is not None:
            problems.append(origin.problem(("local", name), "is read only with backend: vllm; the local route "
                                                            "runs the in-process model (set local.backend: vllm)"))
    return problems

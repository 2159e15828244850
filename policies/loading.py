"""Loading draftgate.yaml: every problem reported at once, each with file, line and field path."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from policies.errors import ConfigError, ConfigProblem
from policies.schema import AUTO_ALIAS, CascadeAction, GatewayConfig, HostedAction
from policies.source import ConfigShapeError, Located, render_path, resolve_env

DEFAULT_CONFIG = Path(__file__).resolve().parent / "default.yaml"
RESERVED_ALIASES = frozenset({AUTO_ALIAS})


def load(path: Path, env: Mapping[str, str]) -> GatewayConfig:
    """Loads and validates a config file; raises ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(str(path), None, "", f"cannot read the file: {exc}")]) from None
    return load_text(text, env, filename=str(path))


def default_config() -> GatewayConfig:
    """The embedded defaults: local model on, no hosted models, the default policy."""
    return load(DEFAULT_CONFIG, {})


def load_text(text: str, env: Mapping[str, str], filename: str = "<string>") -> GatewayConfig:
    try:
        source = Located(text, filename)
    except (ConfigShapeError, RecursionError) as exc:  # RecursionError: nesting thousands of levels deep
        reason = str(exc) if isinstance(exc, ConfigShapeError) else "values nested too deeply"
        raise ConfigError([ConfigProblem(filename, None, "", reason)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigProblem(filename, line, "", f"invalid YAML: {reason}")]) from None
    if source.data is None:
        raise ConfigError([ConfigProblem(filename, None, "", "the file is empty")])
    if not isinstance(source.data, dict):
        raise ConfigError([ConfigProblem(filename, 1, "", "the top level must be a mapping of settings")])
    problems = [ConfigProblem(filename, line, render_path(path), f"duplicate key (first on line {source.lines[path]})")
                for path, line in source.duplicate_keys]
    problems += [ConfigProblem(filename, line, render_path(path), "holds a lone surrogate (\\ud800-\\udfff): "
                               "not text") for path, line in source.lone_surrogates]
    data = resolve_env(source.data, env, source, problems)
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_validation_problems(exc, source))
        raise ConfigError(problems) from None
    except RecursionError:  # e.g. a JSON Schema nested thousands of levels deep
        raise ConfigError([*problems, ConfigProblem(filename, None, "", "values nested too deeply")]) from None
    problems.extend(_semantic_problems(config, source))
    if problems:
        raise ConfigError(problems)
    return config


def _validation_problems(exc: ValidationError, source: Located) -> list[ConfigProblem]:
    out = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif isinstance(error.get("input"), (str, int, float, bool)) and error["type"] != "value_error":
            message = f"{message} (got {error['input']!r})"
        out.append(source.problem(loc, message.removeprefix("Value error, ")))
    return out


def _semantic_problems(config: GatewayConfig, source: Located) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    names = config.model_names()
    known = set(names)
    seen: set[str] = set()
    for i, model in enumerate(config.models):
        if model.name in seen:
            problems.append(source.problem(("models", i, "name"), f"duplicate alias {model.name!r}"))
        seen.add(model.name)
        if model.name in RESERVED_ALIASES or model.name == config.local.alias:
            problems.append(source.problem(("models", i, "name"), f"alias {model.name!r} is reserved"))
        for j, fallback in enumerate(model.fallbacks):
            if fallback not in known or fallback == model.name:
                problems.append(source.problem(("models", i, "fallbacks", j), f"unknown fallback alias {fallback!r}"))
    if config.reference_model is not None and config.reference_model not in known:
        problems.append(source.problem(("reference_model",), f"unknown model alias {config.reference_model!r}"))
    teams = {t.name for t in config.teams}
    requestable = set(config.requestable_aliases())
    for i, key in enumerate(config.keys):
        if teams and key.team is not None and key.team not in teams:
            problems.append(source.problem(("keys", i, "team"), f"team {key.team!r} is not declared in teams"))
        for j, alias in enumerate(key.models or ()):
            if alias not in requestable:
                problems.append(source.problem(("keys", i, "models", j), f"unknown model alias {alias!r}"))
    problems += _action_problems(config.policies.default, ("policies", "default"), known, source)
    for i, rule in enumerate(config.policies.rules):
        problems += _action_problems(rule.action, ("policies", "rules", i, "action"), known, source)
    return problems


def _action_problems(action: Any, path: tuple[str | int, ...], known: set[str],
                     source: Located) -> list[ConfigProblem]:
    out = []
    if isinstance(action, HostedAction) and action.alias not in known:
        out.append(source.problem(path + ("hosted",), f"unknown model alias {action.alias!r}"))
    if isinstance(action, CascadeAction):
        base = path + ("cascade",)
        if action.escalate_to not in known:
            out.append(source.problem(base + ("escalate_to",), f"unknown model alias {action.escalate_to!r}"))
        for j, spec in enumerate(action.verifiers):
            judge_model = spec.options.get("model") if spec.kind == "judge" else None
            if spec.kind == "judge" and judge_model not in known:
                out.append(source.problem(base + ("verifiers", j, "judge", "model"),
                                          f"unknown model alias {judge_model!r}"))
    return out

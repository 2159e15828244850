"""`draftgate route explain`: the policy's decision for a request file, without serving it."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import policies
from gateway.auth import Principal
from gateway.errors import ModelNotAllowed, openai_param, reply_for, validation_text
from gateway.pipeline import to_job
from gateway.schemas import ChatRequest, CompletionRequest
from gateway.services import build_planner, hosted_models
from ledger import KeyInfo
from router import HostedClient, RoutingError


def explain_request(config: policies.GatewayConfig, request_file: Path, *, team: str | None,
                    key_name: str | None, virtual_key: KeyInfo | None = None) -> dict[str, Any]:
    """Rule, conditions and decision for one request body (`refusal`: the error the gateway would answer with
    instead of serving it); ValueError for an unreadable request or an alias the gateway does not serve. A body with
    `prompt` and no `messages` is a /v1/completions request: explained as the chat request it is served as."""
    try:
        raw = json.loads(_read(request_file))
        legacy = isinstance(raw, dict) and "prompt" in raw and "messages" not in raw
        body = CompletionRequest.model_validate(raw).to_chat() if legacy else ChatRequest.model_validate(raw)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{request_file}: cannot read a JSON request: {exc}") from None
    except ValidationError as exc:  # every problem at once, as check-config reports a config's
        problems = [f"{openai_param(e['loc']) or '(body)'}: {validation_text(e)}" for e in exc.errors()]
        if len(problems) == 1:
            raise ValueError(f"{request_file}: {problems[0]}") from None
        listed = "\n".join(f"  {problem}" for problem in problems)
        raise ValueError(f"{request_file}: {len(problems)} problems:\n{listed}") from None
    planner = build_planner(config, HostedClient(hosted_models(config)))  # the client is never called here
    job = to_job(body, "explain")
    caller = _caller(config, key_name, team, virtual_key)
    try:
        caller.check_model(job.alias)
        decision = planner.explain(job, caller.key_name, caller.team)
    except (RoutingError, ModelNotAllowed) as exc:  # an alias the gateway or the key does not serve: refused
        reply = reply_for(exc)  # before any rule is matched
        raise ValueError(f"{request_file}: the gateway would answer {reply.status} {reply.code}: {reply.message}"
                         ) from None
    refusal = None
    try:
        plan = planner.plan_for(job, decision)
    except RoutingError as exc:  # e.g. tools or logprobs sent to the local model: the rule that chose it is the why
        reply = reply_for(exc)
        refusal = f"{reply.status} {reply.code}: {reply.message}"
        action = f"refused ({reply.status} {reply.code})"
    else:
        action = ("cascade via local draft, escalate to " + plan.cascade.escalate_to if plan.cascade
                  else f"{plan.route.value} ({plan.alias})")
        if plan.alias == config.local.alias and not config.local.enabled:
            action += " — but local.enabled is false, so the gateway answers 503 local_unavailable"
    return {"rule": decision.rule, "explanation": [c.as_dict() for c in decision.explanation],
            "decision": action, "refusal": refusal, "p_hosted": decision.p_hosted, "summary": decision.summary()}


def _caller(config: policies.GatewayConfig, key_name: str | None, team: str | None,
            virtual_key: KeyInfo | None) -> Principal:
    """Who `--key` and `--team` describe. A key of the config, or a virtual key of the ledger (`virtual_key`),
    brings its team, as the gateway reads it from the key (a rule on the team held for it there and not here),
    and its `models`; a name neither knows is taken as given."""
    key = next((k for k in config.keys if k.name == key_name), None)
    models: Sequence[str] | None
    if key is not None:
        key_id, key_team, models = f"config:{key.name}", key.team, key.models
    elif virtual_key is not None:
        key_id, key_team, models = virtual_key.key_id, virtual_key.team, virtual_key.models
    else:
        return Principal(key_id=None, key_name=key_name, team=team)
    if team is not None and team != key_team:
        raise ValueError(f"--team {team}: the key {key_name} is in team {key_team or '(none)'}, which the gateway "
                         "uses for it")
    return Principal(key_id=key_id, key_name=key_name, team=key_team,
                     models=frozenset(models) if models is not None else None)


def _read(request_file: Path) -> bytes:
    """The file's bytes, which json.loads decodes as the gateway decodes a body (a UTF-8 BOM, UTF-16 included);
    `-` is stdin, as curl's `-d @-` is (`jq ... | draftgate route explain -`)."""
    if str(request_file) != "-":
        return request_file.read_bytes()
    if sys.stdin is None:  # closed, as under some service managers
        raise OSError("stdin is closed")
    return sys.stdin.buffer.read()

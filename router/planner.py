"""Turns a request and the policy's decision into a plan: local, hosted alias, or cascade."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

from local_engine import PLAIN_SAMPLING, LocalCapabilities, SamplingOptions
from policies import CascadeAction, Decision, PolicySet, RequestFacts
from router.cascade import CascadeSpec, EscalationMode, OnHostedUnavailable
from router.errors import UnknownModelError, UnsupportedParameterError
from router.hosted import HostedClient
from router.job import Job, Plan, Route
from router.verifiers import JudgeFn, build_verifier

AUTO_ALIAS = "auto"
CHARS_PER_TOKEN = 4  # prompt-size rules use this estimate; exact counts come from the model that serves


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def facts_for(job: Job, key_name: str | None, team: str | None) -> RequestFacts:
    """What rules may look at. Only request structure and caller identity: never instructions in text."""
    text = "\n".join(_text_of(m) for m in job.messages)
    last_user = next((_text_of(m) for m in reversed(job.messages) if m.get("role") == "user"), "")
    metadata = job.body.get("metadata") or {}
    return RequestFacts(model=job.alias, key_name=key_name, team=team, metadata=dict(metadata),
                        prompt_tokens=max(1, len(text) // CHARS_PER_TOKEN) if text else 0,
                        roles=tuple(str(m.get("role")) for m in job.messages), message_count=len(job.messages),
                        text=text, last_user_text=last_user, has_tools=bool(job.body.get("tools") or job.body.get("functions")),
                        has_response_format=_asks_for_a_format(job.body.get("response_format")))


class Planner:
    """Applies the policy; the classifier's score is computed off the event loop and only when a rule asks."""

    def __init__(self, policy: PolicySet, hosted: HostedClient, *, local_alias: str, local_enabled: bool,
                 score_prompt: Callable[[str], float] | None = None, judge: JudgeFn | None = None,
                 local_capabilities: LocalCapabilities = PLAIN_SAMPLING) -> None:
        self._policy = policy
        self._hosted = hosted
        self.local_alias = local_alias
        self._local_enabled = local_enabled
        self._local_capabilities = local_capabilities
        self._score_prompt = score_prompt
        # Verifiers are built once, at startup, so a bad option fails the start, not a request.
        self._cascades: dict[int, CascadeSpec] = {}
        actions = [policy.config.default] + [rule.action for rule in policy.config.rules]
        for action in actions:
            if isinstance(action, CascadeAction):
                self._cascades[id(action)] = cascade_spec(action, judge)

    def known_alias(self, alias: str) -> bool:
        """Whether clients may name `alias`: as /v1/models lists them (the local one only while it is enabled)."""
        return alias == AUTO_ALIAS or (alias == self.local_alias and self._local_enabled) or alias in self._hosted

    async def plan(self, job: Job, key_name: str | None, team: str | None) -> Plan:
        """The plan for a job, or UnknownModelError / RoutingError."""
        if not self.known_alias(job.alias):
            raise UnknownModelError(job.alias)
        facts = facts_for(job, key_name, team)
        score = self._score_prompt
        scorer = (lambda: score(facts.text)) if self._policy.needs_p_hosted and score is not None else None
        if self._policy.needs_thread:  # the classifier or regexes on client text: not on the event loop
            decision = await asyncio.to_thread(self._policy.match, facts, scorer)
        else:
            decision = self._policy.match(facts, None)
        return self._to_plan(job, decision)

    def explain(self, job: Job, key_name: str | None, team: str | None) -> Decision:
        """The policy's full decision, synchronously (for `draftgate route explain`): the rule and every condition
        checked, which `plan_for` then turns into a plan, or a refusal worth showing with it."""
        if not self.known_alias(job.alias):
            raise UnknownModelError(job.alias)
        facts = facts_for(job, key_name, team)
        score = self._score_prompt
        return self._policy.match(facts, (lambda: score(facts.text)) if score else None)

    def plan_for(self, job: Job, decision: Decision) -> Plan:
        """The plan a decision makes for a job; RoutingError when its route cannot serve the job as asked."""
        return self._to_plan(job, decision)

    def _to_plan(self, job: Job, decision: Decision) -> Plan:
        action = decision.action
        kind = action.kind
        common: dict[str, Any] = {"rule": decision.rule,
                                  "rule_summary": decision.summary() if decision.rule else None,
                                  "explanation": [c.as_dict() for c in decision.explanation],
                                  "p_hosted": decision.p_hosted}
        if kind == "requested":
            kind = "local" if job.alias in (AUTO_ALIAS, self.local_alias) else "hosted"
            target = job.alias
        else:
            target = getattr(action, "alias", None) or getattr(action, "escalate_to", None) or self.local_alias
        if kind == "hosted":
            if target not in self._hosted:
                raise UnknownModelError(target)
            return Plan(route=Route.HOSTED, alias=target, **common)
        unsupported = local_cannot_serve(job.body, job.sampling, self._local_capabilities)
        limit = self._local_capabilities.max_choices
        if unsupported is None and limit is not None and job.n > limit:  # refused before a budget is reserved
            unsupported = Refusal(f"n={job.n} is more choices than the local model can queue at once ({limit})", "n")
        if kind == "cascade":
            spec = self._cascades[id(action)]
            # No draft possible, or n drafts that one verdict cannot cover: straight to the target.
            if unsupported or job.n > 1 or not self._local_enabled:
                return Plan(route=Route.HOSTED, alias=spec.escalate_to, cascade_target=True, **common)
            return Plan(route=Route.LOCAL, alias=self.local_alias, max_local_tokens=spec.max_local_tokens,
                        cascade=spec, **common)
        if unsupported:
            refused = UnsupportedParameterError(f"{unsupported.reason}; send such requests to a hosted model, or "
                                                "add a policy rule that routes them to one", unsupported.param)
            # the rule that chose the local route, for the ledger row and `x-draftgate-rule` (as `route explain`)
            refused.plan = Plan(route=Route.LOCAL, alias=self.local_alias, **common)  # type: ignore[attr-defined]
            raise refused
        return Plan(route=Route.LOCAL, alias=self.local_alias,
                    max_local_tokens=getattr(action, "max_local_tokens", None), **common)


def _asks_for_a_format(response_format: Any) -> bool:
    """`{"type": "text"}` is the default spelled out (some SDKs always send it): it asks for no format."""
    return isinstance(response_format, dict) and response_format.get("type") not in (None, "text")


class Refusal(NamedTuple):
    """Why the local model cannot serve a request as asked, and the parameter that asks for it."""

    reason: str
    param: str


def local_cannot_serve(body: dict[str, Any], sampling: SamplingOptions,
                       capabilities: LocalCapabilities = PLAIN_SAMPLING) -> Refusal | None:
    """Why the local model cannot answer this request as asked, if it cannot: served anyway, the answer would
    silently lack what the client asked for. Neither backend calls tools, answers in audio, searches the web,
    moderates or reads images (vLLM calls tools only with server flags and a parser this gateway cannot know); the
    sampling options depend on the backend's `capabilities` (vLLM applies them, the in-process engine none).
    Neutral values (a penalty of 0, an empty bias), which many SDKs send by default, are never refused."""
    if body.get("tools"):
        return Refusal("the local model does not call tools (`tools`)", "tools")
    if body.get("functions"):
        return Refusal("the local model does not call functions (`functions`)", "functions")
    if body.get("audio") or "audio" in (body.get("modalities") or ()):
        return Refusal("the local model answers in text only (`audio`, `modalities`)",
                       "audio" if body.get("audio") else "modalities")
    if body.get("web_search_options") is not None:
        return Refusal("the local model does not search the web (`web_search_options`)", "web_search_options")
    if body.get("moderation") is not None:
        return Refusal("the local model runs no moderation (`moderation`)", "moderation")
    missing = capabilities.missing(sampling)
    if missing:
        if missing[0] in ("logprobs", "top_logprobs"):
            return Refusal("the local model does not return `logprobs`", missing[0])
        return Refusal(f"the local model does not apply `{missing[0]}`", missing[0])
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(part, dict) and part.get("type") != "text"
                                             for part in content):
            return Refusal("the local model reads text only (a message has a non-text content part)", "messages")
    return None


def cascade_spec(action: CascadeAction, judge: JudgeFn | None) -> CascadeSpec:
    """A cascade rule's settings with its verifiers built (VerifierConfigError on bad options)."""
    verifiers = [build_verifier(spec.kind, spec.options, judge=judge) for spec in action.verifiers]
    return CascadeSpec(escalate_to=action.escalate_to, verifiers=tuple(verifiers),
                       mode=EscalationMode(action.mode), on_hosted_unavailable=OnHostedUnavailable(
                           action.on_hosted_unavailable), max_local_tokens=action.max_local_tokens)

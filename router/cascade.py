"""Draft → verify → escalate: the local model drafts, verifiers judge, a hosted model takes over on failure.

Streaming-safe by construction: the draft is generated and verified in full before the first byte
is sent, so a client never sees part of a draft that is later replaced.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from local_engine import Completion, ContextLengthError, RequestRejectedError
from router.errors import UpstreamError
from router.executor import ChunkStream, Executor
from router.job import Job, Outcome, Plan, Route, for_escalation, note_dropped
from router.streams import completed_chunks, completion_body
from router.usage import message_text
from router.verifiers import (
    Draft,
    JsonSchemaVerifier,
    JudgeReply,
    ResponseFormatVerifier,
    Verdict,
    Verifier,
    run_verifiers,
)

E = TypeVar("E", bound=BaseException)


class EscalationMode(str, enum.Enum):
    """`regenerate`: the hosted model answers the original request; `refine`: it fixes the draft."""

    REGENERATE = "regenerate"
    REFINE = "refine"


class OnHostedUnavailable(str, enum.Enum):
    SERVE_DRAFT = "serve_draft"
    ERROR = "error"


@dataclass(frozen=True)
class CascadeSpec:
    """A cascade rule's settings, with its verifiers already built."""

    escalate_to: str
    verifiers: Sequence[Verifier] = ()
    mode: EscalationMode = EscalationMode.REGENERATE
    on_hosted_unavailable: OnHostedUnavailable = OnHostedUnavailable.ERROR
    max_local_tokens: int | None = None
    max_p_hosted: float | None = None  # escalate when the classifier, given the draft, scores above this


@dataclass
class Judgement:
    """The verifiers' verdicts on one draft."""

    verdicts: list[Verdict] = field(default_factory=list)
    wrong_format: bool = False  # the draft fails the request's own JSON response_format: never served

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    def reason(self) -> str:
        failed = [f"{v.verifier}: {v.reason}" for v in self.verdicts if not v.passed]
        return "; ".join(failed)

    @property
    def says_something(self) -> bool:
        """Whether the verdicts judged the draft: failed only by checks that could not run (an unreachable judge),
        it was escalated without evidence, so `router train --from-ledger` must not learn it needed hosting."""
        return self.passed or any(not v.passed and v.judged for v in self.verdicts)


MAX_STORED_CHARS = 4000
# The local model refused the request itself (nothing was computed): the cascade's target answers it.
LOCAL_REFUSALS = (ContextLengthError, RequestRejectedError)


def _prompt_text(job: Job) -> str:
    """The user messages' text (content parts' text, not their repr): what `router train --from-ledger` learns."""
    return "\n".join(message_text(m) for m in job.messages if m.get("role") == "user")


REFINE_INSTRUCTIONS = (
    "A draft answer to the conversation above was produced by a smaller model and failed automatic "
    "verification. Write the correct final answer for the user. Reuse what is right in the draft, fix what "
    "the findings point out, and reply with the answer only (no commentary about the draft).\n\n"
    "Draft:\n{draft}\n\nVerification findings:\n{findings}"
)


def refine_messages(messages: list[dict[str, Any]], draft: str, judgement: Judgement) -> list[dict[str, Any]]:
    """The conversation plus the draft and the verifier's findings, for `refine` escalations."""
    findings = "\n".join(f"- {v.verifier}: {v.reason}" for v in judgement.verdicts if not v.passed)
    return [*messages, {"role": "user", "content": REFINE_INSTRUCTIONS.format(draft=draft, findings=findings)}]


def _escalation(mode: EscalationMode, spec: CascadeSpec, reason: str, job: Job) -> dict[str, Any]:
    """What the row (and the response's `draftgate.escalation`) says about an escalation."""
    detail: dict[str, Any] = {"mode": mode.value, "to": spec.escalate_to, "reason": reason}
    note_dropped(detail, job)
    return detail


def _add_judge_bill(outcome: Outcome, judgement: Judgement) -> None:
    """Adds what the LLM judges' hosted calls cost to the request's hosted dollars (an unknown price makes the
    request unpriced, never $0)."""
    bills = [v.details for v in judgement.verdicts if "cost_usd" in v.details]
    if not bills:
        return
    for bill in bills:
        outcome.add_hosted_cost(bill["cost_usd"])
    outcome.detail["judge"] = {"cost_usd": sum(b["cost_usd"] for b in bills if b["cost_usd"] is not None), "prompt_tokens": sum(b["prompt_tokens"] for b in bills),
                               "completion_tokens": sum(b["completion_tokens"] for b in bills)}


def _cancelled(name: str, exc: BaseException) -> list[Verdict]:
    """The verdict of a check cancelled mid-run: only for a judge whose call the provider had (and bills)."""
    spent = getattr(exc, "outcome", None)
    if not isinstance(spent, JudgeReply):
        return []
    bill = {"cost_usd": spent.cost_usd, "prompt_tokens": spent.prompt_tokens, "completion_tokens": 0}
    return [Verdict(name, False, "cancelled: the client left while the judge answered", bill, judged=False)]


class Cascade:
    """Runs cascade plans with the executor's local and hosted paths."""

    def __init__(self, executor: Executor, score_draft: Callable[[str, str], float] | None = None) -> None:
        self._executor = executor
        self._score_draft = score_draft

    async def judge(self, job: Job, spec: CascadeSpec, completion: Completion) -> Judgement:
        draft = Draft(text=completion.text, request=job.body, signals=completion.confidence.as_dict())
        verifiers = list(spec.verifiers)
        if ResponseFormatVerifier.applies(job.body, verifiers):  # a draft is never served in the wrong format
            verifiers.append(ResponseFormatVerifier())
        verdicts: list[Verdict] = []  # every check's (for the row and refine's findings), but a judge's after a
        wrong_format = False  # failure: a paid call cannot save a draft an earlier check failed
        for verifier in verifiers:
            if verifier.name == "judge" and not all(v.passed for v in verdicts):
                continue
            try:
                (verdict,) = await run_verifiers([verifier], draft)
            except asyncio.CancelledError as exc:  # its client left: the judges' calls so far are still billed
                exc.judgement = Judgement([*verdicts, *_cancelled(verifier.name, exc)])  # type: ignore[attr-defined]
                raise
            verdicts.append(verdict)
            wrong_format = wrong_format or (ResponseFormatVerifier.wanted(job.body) and not verdict.passed
                                            and isinstance(verifier, JsonSchemaVerifier) and verifier.from_request)
        if spec.max_p_hosted is not None and self._score_draft is not None:
            score = self._score_draft(_prompt_text(job), completion.text)
            verdicts.append(Verdict("classifier", score <= spec.max_p_hosted,
                                    f"p_hosted with the draft is {score:.3f} (limit {spec.max_p_hosted:g})",
                                    {"p_hosted": score}))
        return Judgement(verdicts, wrong_format)

    async def _draft(self, job: Job, plan: Plan, spec: CascadeSpec) -> tuple[Completion, Judgement]:
        """The draft and its verdicts. Cancelled meanwhile (its client gone), the CancelledError carries what
        the draft used, as a plain local request's does."""
        local_plan = Plan(route=Route.LOCAL, alias=self._executor.local_alias,
                          max_local_tokens=spec.max_local_tokens or plan.max_local_tokens)
        (completion,) = await self._executor.local_choices(job, local_plan)
        try:
            return completion, await self.judge(job, spec, completion)
        except asyncio.CancelledError as exc:
            outcome = self._executor.local_outcome(completion)
            outcome.detail["cancelled_while"] = "verifying the draft"
            judgement = getattr(exc, "judgement", None)
            if isinstance(judgement, Judgement):
                _add_judge_bill(outcome, judgement)
                outcome.detail["verdicts"] = [v.as_dict() for v in judgement.verdicts]
            exc.outcome = outcome  # type: ignore[attr-defined]
            raise

    def _escalation_job(self, job: Job, spec: CascadeSpec, completion: Completion, judgement: Judgement) -> Job:
        if spec.mode is EscalationMode.REGENERATE:
            return for_escalation(job)
        messages = refine_messages(job.messages, completion.text, judgement)
        body = {**job.upstream_body, "messages": messages}
        return for_escalation(Job(**{**job.__dict__, "messages": messages, "upstream_body": body}))

    def _annotate(self, outcome: Outcome, job: Job, spec: CascadeSpec, completion: Completion,
                  judgement: Judgement, escalated: bool) -> None:
        _add_judge_bill(outcome, judgement)
        outcome.detail["verdicts"] = [v.as_dict() for v in judgement.verdicts]
        outcome.detail["draft_confidence"] = completion.confidence.as_dict()
        if judgement.says_something:  # what `draftgate router train --from-ledger` learns from: prompt, draft, fate
            outcome.detail["outcome"] = {"prompt": _prompt_text(job)[:MAX_STORED_CHARS],
                                         "draft": completion.text[:MAX_STORED_CHARS], "passed": not escalated}
        if escalated:
            outcome.route = Route.ESCALATED
            outcome.escalation_reason = judgement.reason()
            outcome.wasted_draft_usd = completion.cost_usd
            outcome.device_seconds = completion.device_seconds
            outcome.detail["escalation"] = _escalation(spec.mode, spec, outcome.escalation_reason, job)

    def _serve_draft(self, job: Job, completion: Completion, judgement: Judgement, error: UpstreamError) -> Outcome:
        outcome = self._executor.local_outcome(completion)
        _add_judge_bill(outcome, judgement)
        billed = error.outcome  # escalation attempts the provider charged though none answered usably
        if isinstance(billed, Outcome) and (billed.hosted_cost_usd is not None or billed.unpriced):
            outcome.add_hosted_cost_of(billed)
            outcome.attempts = billed.attempts
            outcome.detail["usage_estimated"] = True
            outcome.detail["escalation_prompt_tokens"] = billed.prompt_tokens
        outcome.detail["verdicts"] = [v.as_dict() for v in judgement.verdicts]  # as any draft's row has them,
        if judgement.says_something:
            outcome.detail["outcome"] = {"prompt": _prompt_text(job)[:MAX_STORED_CHARS],  # for --from-ledger too
                                         "draft": completion.text[:MAX_STORED_CHARS], "passed": False}
        outcome.detail["unverified_draft"] = {"reason": judgement.reason(), "hosted_error": error.message}
        outcome.escalation_reason = f"hosted unavailable, served the unverified draft: {error.message}"
        return outcome

    def _failed_escalation(self, exc: E, job: Job, spec: CascadeSpec, completion: Completion,
                           judgement: Judgement) -> E:
        """The upstream error, carrying what the thrown-away draft cost, so the ledger row of the failed
        request still has the draft's device time, its wasted dollars, the verdicts and the reason."""
        outcome = Outcome(route=Route.ESCALATED, provider_model=None)
        hosted = getattr(exc, "outcome", None)  # a cancelled escalation's own bill: the prompt the upstream had
        if isinstance(hosted, Outcome):
            outcome.provider_model, outcome.prompt_tokens = hosted.provider_model, hosted.prompt_tokens
            outcome.hosted_cost_usd, outcome.unpriced = hosted.hosted_cost_usd, hosted.unpriced
            outcome.attempts, outcome.detail = hosted.attempts, dict(hosted.detail)
        self._annotate(outcome, job, spec, completion, judgement, escalated=True)
        outcome.detail["draft_tokens"] = {"prompt": completion.prompt_tokens, "completion": completion.completion_tokens}
        exc.outcome = outcome  # type: ignore[attr-defined]  # (UpstreamError has the slot; a CancelledError takes it)
        return exc

    @staticmethod
    def _no_draft(outcome: Outcome, job: Job, spec: CascadeSpec, refusal: Exception) -> None:
        """Marks a hosted answer given because the local model refused the request outright."""
        outcome.route = Route.ESCALATED
        outcome.escalation_reason = f"no local draft: {refusal}"
        outcome.detail["escalation"] = _escalation(EscalationMode.REGENERATE, spec, outcome.escalation_reason, job)

    async def run(self, job: Job, plan: Plan, spec: CascadeSpec) -> Outcome:
        """Non-streaming: draft, verify, and escalate when a verifier fails."""
        try:
            completion, judgement = await self._draft(job, plan, spec)
        except LOCAL_REFUSALS as refusal:  # e.g. a prompt longer than the local context: the target answers
            outcome = await self._executor.run_hosted(for_escalation(job), spec.escalate_to)
            self._no_draft(outcome, job, spec, refusal)
            assert outcome.body is not None
            outcome.body["draftgate"] = {"escalation": outcome.detail["escalation"]}
            return outcome
        if judgement.passed:
            outcome = self._executor.local_outcome(completion)
            self._annotate(outcome, job, spec, completion, judgement, escalated=False)
            outcome.body = completion_body(job, self._executor.local_alias, completion)
            return outcome
        try:
            outcome = await self._executor.run_hosted(self._escalation_job(job, spec, completion, judgement),
                                                      spec.escalate_to)
        except asyncio.CancelledError as exc:  # its client left during the escalation: the draft was still spent
            raise self._failed_escalation(exc, job, spec, completion, judgement) from None
        except UpstreamError as exc:
            if spec.on_hosted_unavailable is OnHostedUnavailable.ERROR or judgement.wrong_format:
                raise self._failed_escalation(exc, job, spec, completion, judgement) from None
            outcome = self._serve_draft(job, completion, judgement, exc)
            outcome.body = completion_body(job, self._executor.local_alias, completion)
            outcome.body["draftgate"]["unverified_draft"] = outcome.detail["unverified_draft"]
            return outcome
        self._annotate(outcome, job, spec, completion, judgement, escalated=True)
        assert outcome.body is not None
        outcome.body["draftgate"] = {"escalation": outcome.detail["escalation"],
                                     "verdicts": outcome.detail["verdicts"]}
        return outcome

    async def stream(self, job: Job, plan: Plan, spec: CascadeSpec) -> ChunkStream:
        """Streaming: the verdict is in before the first byte; then the draft or the hosted stream flows."""
        try:
            completion, judgement = await self._draft(job, plan, spec)
        except LOCAL_REFUSALS as refusal:
            opened = await self._executor.stream_hosted(for_escalation(job), spec.escalate_to)
            self._no_draft(opened.outcome, job, spec, refusal)
            return opened
        if not judgement.passed:
            try:
                opened = await self._executor.stream_hosted(
                    self._escalation_job(job, spec, completion, judgement), spec.escalate_to)
            except asyncio.CancelledError as exc:
                raise self._failed_escalation(exc, job, spec, completion, judgement) from None
            except UpstreamError as exc:
                if spec.on_hosted_unavailable is OnHostedUnavailable.ERROR or judgement.wrong_format:
                    raise self._failed_escalation(exc, job, spec, completion, judgement) from None
                outcome = self._serve_draft(job, completion, judgement, exc)
                return ChunkStream(outcome, completed_chunks(job, self._executor.local_alias, [completion]))
            self._annotate(opened.outcome, job, spec, completion, judgement, escalated=True)
            return opened
        outcome = self._executor.local_outcome(completion)
        self._annotate(outcome, job, spec, completion, judgement, escalated=False)
        return ChunkStream(outcome, completed_chunks(job, self._executor.local_alias, [completion]))

"""The verifier contract: a draft goes in, a verdict with a specific reason comes out."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("draftgate.verifiers")


@dataclass(frozen=True)
class JudgeReply:
    """A judge's reply and what its hosted call cost (None: the model has no known price)."""

    text: str
    cost_usd: float | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


# (hosted alias, messages) -> the reply, priced (a bare text: a judge that costs nothing, as in tests)
JudgeFn = Callable[[str, list[dict[str, Any]]], Awaitable[str | JudgeReply]]


@dataclass(frozen=True)
class Draft:
    """A local answer to judge, with the request it answers and the engine's confidence signals."""

    text: str
    request: Mapping[str, Any]
    signals: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Verdict:
    """Pass or fail, and a reason specific enough to hand to a model that must fix the draft."""

    verifier: str
    passed: bool
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)
    judged: bool = True  # False: the check could not run (judge unreachable, a timeout), so it says nothing of the draft

    def as_dict(self) -> dict[str, Any]:
        shown = {"verifier": self.verifier, "passed": self.passed, "reason": self.reason, "details": dict(self.details)}
        return shown if self.judged else {**shown, "judged": False}


class Verifier(Protocol):
    """Judges drafts. A bad draft is a failed Verdict, never an exception; only misconfiguration raises."""

    name: str

    async def verify(self, draft: Draft) -> Verdict: ...


async def run_verifiers(verifiers: Sequence[Verifier], draft: Draft, *,
                        stop_on_first_failure: bool = True) -> list[Verdict]:
    """Runs verifiers in order; with `stop_on_first_failure` the later (often costlier) ones are skipped."""
    verdicts = []
    for verifier in verifiers:
        try:
            verdict = await verifier.verify(draft)
        except (ValueError, TypeError, RecursionError, MemoryError) as exc:  # a draft that breaks a check fails it
            log.warning("verifier %s failed on a draft: %s", verifier.name, exc)
            verdict = Verdict(verifier.name, False, f"the check could not judge the draft ({type(exc).__name__})",
                              judged=False)
        verdicts.append(verdict)
        if stop_on_first_failure and not verdict.passed:
            break
    return verdicts

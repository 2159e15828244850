"""Which budgets and rate limits apply to a caller, what a request may cost, and 429s when full.

Reservations are upper bounds (prompt bytes as tokens, `max_tokens` or a 4,096-token cap, the
priciest model the request may reach, fallbacks included), so concurrent requests on any number of
replicas cannot together pass a dollar budget; `settle` then charges what each request really cost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

import policies
from gateway.auth import Principal
from gateway.errors import GatewayError, InvalidRequest
from ledger.budgets import BudgetExceeded, BudgetStore, Claim, Limits, counters
from router import EMBEDDINGS, Job, Outcome, Plan, Pricing, Route
from router.hosted import HostedClient

log = logging.getLogger("draftgate")
DEFAULT_COMPLETION_RESERVE = 4096  # tokens reserved when a request sets no max_tokens
MESSAGE_OVERHEAD_TOKENS = 8


class BudgetExceededError(GatewayError):
    status_code = 429

    def __init__(self, exc: BudgetExceeded) -> None:
        counter = exc.counter
        headers: dict[str, str] = {}
        message = str(exc)
        # No wait helps when the request can never fit or the budget never resets: the OpenAI SDK retries any 429
        # without a long Retry-After (twice by default, each retry another refused row), unless told not to.
        no_retry = {"x-should-retry": "false"}
        if exc.never_fits:  # the client must ask for less
            headers = no_retry
        elif exc.in_flight:  # not spent, only reserved: free again as soon as those requests finish
            headers = {"retry-after": "1"}
        elif counter.resets_at is not None:
            seconds = max(1, int((counter.resets_at - datetime.now(UTC)).total_seconds() + 0.999))
            headers = {"retry-after": str(seconds), "x-draftgate-budget-reset": counter.resets_at.isoformat()}
            reset_header = {"usd": "x-ratelimit-reset-budget", "requests": "x-ratelimit-reset-requests",
                            "tokens": "x-ratelimit-reset-tokens"}[counter.metric]
            headers[reset_header] = f"{seconds}s"
            message += f"; it resets at {counter.resets_at.isoformat()}"
        else:
            message += "; the budget has no period and never resets"
            headers = no_retry
        super().__init__(message, headers=headers)
        if counter.metric == "usd":
            self.error_type, self.code = "budget_exceeded", "budget_exceeded"
        else:
            self.error_type, self.code = "rate_limit_error", "rate_limit_exceeded"


@dataclass
class Reservation:
    claims: list[Claim]


def _limits(config: policies.LimitsConfig) -> Limits:
    return Limits(config.max_budget_usd, config.budget_period, config.rpm_limit, config.tpm_limit)


def input_token_bound(value: Any) -> int:
    """An upper bound on an embeddings `input`'s tokens: a string's UTF-8 bytes, one per token id."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, list):
        return sum(1 if isinstance(v, int) else input_token_bound(v) for v in value)
    return 0


def completion_bound(job: Job) -> int:
    """The most completion tokens a request may be billed: `max_tokens` (or a 4,096 guess) per choice; none for
    embeddings."""
    return 0 if job.endpoint == EMBEDDINGS else (job.max_tokens or DEFAULT_COMPLETION_RESERVE) * job.n


def prompt_token_bound(job: Job) -> int:
    """An upper bound on prompt tokens: no tokenizer makes more tokens than UTF-8 bytes."""
    if job.endpoint == EMBEDDINGS:
        return input_token_bound(job.upstream_body.get("input"))
    size = len(orjson.dumps(job.messages))
    for extra in ("tools", "response_format"):
        if job.body.get(extra):
            size += len(orjson.dumps(job.body[extra]))
    return size + MESSAGE_OVERHEAD_TOKENS * len(job.messages)


class Budgets:
    """Reserves before a request runs, settles after; only callers with limits touch the database."""

    def __init__(self, config: policies.GatewayConfig, store: BudgetStore, pricing: Pricing, hosted: HostedClient,
                 *, local_max_tokens: int) -> None:
        teams = {t.name: _limits(t) for t in config.teams}
        static = {f"config:{k.name}": _limits(k) for k in config.keys}
        self._teams: Mapping[str, Limits] = {name: limits for name, limits in teams.items() if limits.any}
        self._static: Mapping[str, Limits] = {key: limits for key, limits in static.items() if limits.any}
        self._store = store
        self._pricing = pricing
        self._hosted = hosted
        self._local_max_tokens = local_max_tokens
        self._settling: set[asyncio.Task[None]] = set()

    def _scopes(self, principal: Principal) -> list[tuple[str, Limits]]:
        scopes = []
        if principal.key_id is not None:
            limits = self._static.get(principal.key_id) if principal.key_id.startswith("config:") \
                else principal.limits  # read from the database with the key itself, on this request
            if limits is not None and limits.any:
                scopes.append((f"key:{principal.key_id}", limits))
        if principal.team is not None and principal.team in self._teams:
            scopes.append((f"team:{principal.team}", self._teams[principal.team]))
        return scopes

    def _max_cost(self, job: Job, plan: Plan, prompt_tokens: int) -> float | None:
        """The most this request can cost at the models it may reach; None if one of them is unpriced."""
        if plan.route is Route.CACHE:  # answered from the response cache: no model is called
            return 0.0
        hosted_cap = completion_bound(job)
        aliases: list[str] = []
        if plan.route is Route.HOSTED:
            aliases.append(plan.alias)
        if plan.cascade is not None:
            aliases.append(plan.cascade.escalate_to)
        costs: list[float] = []
        for alias in aliases:
            for model in self._hosted.chain(alias):
                cost = self._pricing.hosted_cost(model, prompt_tokens, hosted_cap)
                if cost is None:
                    return None
                costs.append(cost)
        total = max(costs, default=0.0)
        if plan.route is not Route.HOSTED:
            # The local draft: its device time is not known before it runs, so it is bounded by the
            # reference hosted price of its tokens (local device $ per token is far below that).
            local_cap = job.n * min(job.max_tokens or self._local_max_tokens,
                                    plan.max_local_tokens or self._local_max_tokens)
            total += self._pricing.reference_cost(prompt_tokens, local_cap) or 0.0
        return total

    async def reserve(self, principal: Principal, job: Job, plan: Plan) -> Reservation | None:
        """Reserves this request's worst case in every scope that limits the caller, or raises a 429."""
        scopes = self._scopes(principal)
        if not scopes:
            return None
        now = datetime.now(UTC)
        prompt_tokens = prompt_token_bound(job)
        completion_cap = completion_bound(job)
        claims: list[Claim] = []
        max_cost: float | None = None  # priced once, only if some scope has a dollar budget
        for scope, limits in scopes:
            for counter in counters(scope, limits, now):
                if counter.metric == "requests":
                    claims.append(Claim(counter, 1.0))
                elif counter.metric == "tokens":
                    # A worst case above what is left could be refused until the window is empty, or forever:
                    # it claims what is left instead (settled to its real count after), as LiteLLM admits a
                    # request whenever the window is not yet full.
                    claims.append(Claim(counter, float(prompt_tokens + completion_cap), flexible=True))
                else:
                    if max_cost is None:
                        max_cost = self._max_cost(job, plan, prompt_tokens)
                    if max_cost is None:
                        raise InvalidRequest(f"{scope} has a dollar budget, and a model this request may use has "
                                             "no known price; set `price:` for it in the config", param="model")
                    # Without max_tokens the worst case is a guess (4,096 tokens), which may exceed a small
                    # budget: such a request claims what is left of it, settled to its real cost. A client's own
                    # max_tokens is its worst case, held to the budget, as is an embeddings request's (no guess).
                    guessed = job.endpoint != EMBEDDINGS and not job.max_tokens
                    claims.append(Claim(counter, max_cost, flexible=guessed))
        work = asyncio.ensure_future(asyncio.to_thread(self._store.reserve, claims))
        try:
            reserved = await asyncio.shield(work)
        except BudgetExceeded as exc:
            raise BudgetExceededError(exc) from None
        except asyncio.CancelledError:
            # The client left (or the server is stopping) while the database reserved: the thread still reserves,
            # and nobody would settle it, so it held the budget (all that was left of it, without max_tokens)
            # until its window ended. It is released as soon as it is made.
            work.add_done_callback(self._release_abandoned)
            raise
        return Reservation(reserved)

    def _release_abandoned(self, work: asyncio.Future[list[Claim]]) -> None:
        if not work.cancelled() and work.exception() is None:
            self.settle(Reservation(work.result()), None)

    def settle(self, reservation: Reservation | None, outcome: Outcome | None) -> None:
        """Charges what the request really used, in the background (off the response path)."""
        if reservation is None:
            return
        actual: dict[str, float] = {"requests": 1.0}
        if outcome is None:  # failed before any work (an upstream 5xx, unreachable): it cost nothing, as its
            actual.update(tokens=0.0, usd=0.0)  # ledger row says; charging the worst case left phantom spend
        else:
            actual["tokens"] = float(outcome.prompt_tokens + outcome.completion_tokens)
            if outcome.cost_usd is not None:
                actual["usd"] = outcome.cost_usd
        task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(self._store.settle, reservation.claims, actual))  # type: ignore[arg-type]
        self._settling.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not settle a budget reservation: %s", task.exception())

    async def drain(self) -> None:
        """Waits for pending settlements (shutdown)."""
        while self._settling:
            await asyncio.gather(*list(self._settling), return_exceptions=True)

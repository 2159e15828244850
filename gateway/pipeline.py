"""One chat, completions or embeddings request end to end: plan, serve, and account for it in the ledger and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.auth import Principal
from gateway.budgets import Budgets, Reservation
from gateway.cache import CacheFront, Lookup, assembled, replayed, served
from gateway.errors import reply_for
from gateway.metrics import Metrics
from gateway.schemas import ChatRequest, EmbeddingRequest
from ledger import CachedAnswer, LedgerWriter, RequestRecord
from router import (
    CHAT,
    EMBEDDINGS,
    Cascade,
    ChunkStream,
    Embedder,
    Executor,
    Job,
    Outcome,
    Plan,
    Planner,
    Pricing,
    Route,
    StreamBroken,
)

SHUTDOWN_REASON = "server shutting down"  # the row's error when the server, not the client, cancelled it


def cancel_reason(exc: BaseException) -> str:
    """Why a request was cancelled: its client left, or the server stopped before it finished (uvicorn cancels
    what outlasts its graceful-shutdown timeout with a message naming the shutdown)."""
    return SHUTDOWN_REASON if "shutting down" in str(exc) or "shutdown" in str(exc) else "client disconnected"


def _headers(request_id: str, plan: Plan | None, outcome: Outcome | None, *, deferred: bool = False) -> dict[str, str]:
    """The x-draftgate-* headers: what was decided so far, and what it cost when that is known."""
    route = outcome.route.value if outcome else (plan.route.value if plan else "none")
    headers = {"x-draftgate-request-id": request_id, "x-draftgate-route": route}
    if outcome is None or deferred:
        headers["x-draftgate-cost-usd"] = "deferred" if deferred else "0"
    else:
        cost = outcome.cost_usd
        headers["x-draftgate-cost-usd"] = f"{cost:.8f}" if cost is not None else "unpriced"
    if plan is not None and plan.rule_summary:
        headers["x-draftgate-rule"] = _header_safe(plan.rule_summary)
    if outcome is not None:
        if outcome.escalation_reason:
            headers["x-draftgate-escalation"] = _header_safe(outcome.escalation_reason)
        if "unverified_draft" in outcome.detail:
            headers["x-draftgate-unverified-draft"] = "true"
        confidence = outcome.detail.get("confidence") or outcome.detail.get("draft_confidence")
        if confidence:
            headers["x-draftgate-confidence"] = _header_safe(
                ";".join(f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                         for k, v in confidence.items()))
    return headers


def _header_safe(text: str, limit: int = 512) -> str:
    """Header values must be latin-1 on one line."""
    return text.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace").decode("latin-1")[:limit]


def to_job(body: ChatRequest, request_id: str, endpoint: str = CHAT) -> Job:
    """The router's view of a validated request; `endpoint` COMPLETIONS for a legacy completion served as chat."""
    provider_body = body.upstream_body("")
    return Job(request_id=request_id, alias=body.model, body=body.model_dump(exclude_none=True, exclude={"cache"}),
               messages=[m.model_dump(exclude_none=True) for m in body.messages], stream=body.stream,
               wants_usage=body.wants_usage_chunk(), max_tokens=body.token_cap(), temperature=body.temperature,
               stop=tuple(body.stop_list()), seed=body.seed, n=body.n or 1, top_p=body.top_p,
               sampling=body.sampling_options(), upstream_body=provider_body, endpoint=endpoint)


class ChatPipeline:
    """Plans with the policy, serves with the executor (embeddings with the embedder), records every request
    exactly once."""

    def __init__(self, *, planner: Planner, executor: Executor, cascade: Cascade, embedder: Embedder,
                 writer: LedgerWriter, metrics: Metrics, pricing: Pricing, budgets: Budgets,
                 cache: CacheFront | None = None) -> None:
        self._planner = planner
        self._embedder = embedder
        self._executor = executor
        self._cascade = cascade
        self._writer = writer
        self._metrics = metrics
        self._pricing = pricing
        self._budgets = budgets
        self._cache = cache  # None unless the config enables it: then no request reads or writes its table
        self._open: set[str] = set()  # request ids admitted and not yet recorded

    async def drained(self, timeout_s: float) -> bool:
        """Waits until every request taken has its row recorded (a shutdown's cancelled requests record theirs
        a few loop turns after uvicorn cancels them), at most `timeout_s`; whether none is left."""
        deadline = time.monotonic() + timeout_s
        while self._open and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self._open

    async def _serve(self, body: ChatRequest, principal: Principal, request_id: str, headers_out: dict[str, str],
                     endpoint: str) -> tuple[Job, Plan, Any, float, datetime, Reservation | None]:
        """Plans, reserves budget, and serves (or opens the stream); a failure is recorded, then raised."""
        started, created_at = time.perf_counter(), datetime.now(UTC)
        job = to_job(body, request_id, endpoint)
        self._open.add(request_id)
        plan: Plan | None = None
        reservation: Reservation | None = None
        admitted = False  # past the budgets: a request refused before is served by no route
        try:
            principal.check_model(job.alias)
            plan = await self._planner.plan(job, principal.key_name, principal.team)
            reservation = await self._budgets.reserve(principal, job, plan)
            admitted = True
            headers_out.update(_headers(request_id, plan, None))
            if plan.cascade is not None:
                serve = self._cascade.stream if job.stream else self._cascade.run
                result = await serve(job, plan, plan.cascade)
            else:
                result = await (self._executor.stream(job, plan) if job.stream else self._executor.run(job, plan))
        except BaseException as exc:
            refused = getattr(exc, "plan", None)  # a rule matched, and its route cannot serve the request as asked
            if plan is None and isinstance(refused, Plan):
                plan = refused
                if plan.rule_summary:
                    headers_out["x-draftgate-rule"] = _header_safe(plan.rule_summary)
            self._failed(job, plan, principal, created_at, started, exc, reservation, headers_out, admitted=admitted)
            raise
        return job, plan, result, started, created_at, reservation

    def _failed(self, job: Job, plan: Plan | None, principal: Principal, created_at: datetime, started: float,
                exc: BaseException, reservation: Reservation | None, headers_out: dict[str, str], *,
                admitted: bool) -> None:
        """Settles and records a request that failed, with what it spent before failing."""
        carried = getattr(exc, "outcome", None)  # a failure after work was done (an invalid or wasted draft)
        spent = carried if isinstance(carried, Outcome) else None
        if spent is not None:
            headers_out.update(_headers(job.request_id, plan, spent))  # the error reply says what it cost
        self._budgets.settle(reservation, spent)
        self._record_failure(job, plan, principal, created_at, started, exc, spent, admitted=admitted)

    async def embed(self, body: EmbeddingRequest, principal: Principal, request_id: str,
                    headers_out: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        """Serves an embeddings request at the hosted alias it names (no policy applies), with the same scopes,
        budgets, headers and ledger row as a chat request."""
        started, created_at = time.perf_counter(), datetime.now(UTC)
        job = Job(request_id=request_id, alias=body.model, body=body.model_dump(exclude_none=True), messages=[],
                  upstream_body=body.upstream_body(), endpoint=EMBEDDINGS)
        self._open.add(request_id)
        plan: Plan | None = None
        reservation: Reservation | None = None
        admitted = False
        try:
            principal.check_model(job.alias)
            plan = self._embedder.plan(job.alias)
            reservation = await self._budgets.reserve(principal, job, plan)
            admitted = True
            headers_out.update(_headers(request_id, plan, None))
            outcome = await self._embedder.run(job)
        except BaseException as exc:
            self._failed(job, plan, principal, created_at, started, exc, reservation, headers_out, admitted=admitted)
            raise
        self._budgets.settle(reservation, outcome)
        self._record(job, plan, principal, outcome, created_at, started, "ok", 200)
        assert outcome.body is not None
        return outcome.body, _headers(request_id, plan, outcome)

    async def _lookup(self, body: ChatRequest, principal: Principal, request_id: str, headers_out: dict[str, str],
                      endpoint: str) -> Lookup | None:
        """The response cache's decision, before routing; None when the cache is off, or when the request will be
        refused for its model (unknown, or not this key's), which no entry may answer."""
        if self._cache is None:
            return None
        if not (self._planner.known_alias(body.model) and principal.may_use(body.model)):
            headers_out["x-draftgate-cache"] = "skip"
            return None
        started, created_at = time.perf_counter(), datetime.now(UTC)
        try:
            lookup = await self._cache.lookup(body, principal)
        except BaseException as exc:  # a client gone while the database was read: recorded, as in planning
            job = to_job(body, request_id, endpoint)
            self._open.add(request_id)
            self._failed(job, None, principal, created_at, started, exc, None, headers_out, admitted=False)
            raise
        headers_out["x-draftgate-cache"] = lookup.state
        return lookup

    async def _hit(self, body: ChatRequest, principal: Principal, request_id: str, headers_out: dict[str, str],
                   entry: CachedAnswer, endpoint: str) -> tuple[Job, Plan, Outcome, float, datetime, Reservation | None]:
        """A request answered from the cache: it counts against rate limits (a request, its answer's tokens) and
        costs $0, since no model was called; a refused one is recorded as any refused request."""
        started, created_at = time.perf_counter(), datetime.now(UTC)
        job = to_job(body, request_id, endpoint)
        plan = Plan(route=Route.CACHE, alias=job.alias)
        self._open.add(request_id)
        try:
            reservation = await self._budgets.reserve(principal, job, plan)
        except BaseException as exc:
            headers_out.pop("x-draftgate-cache", None)  # refused, not answered from the cache: a 429 is no hit
            self._failed(job, None, principal, created_at, started, exc, None, headers_out, admitted=False)
            raise
        outcome = Outcome(route=Route.CACHE, provider_model=entry.provider_model, prompt_tokens=entry.prompt_tokens,
                          completion_tokens=entry.completion_tokens, hosted_cost_usd=0.0, local_cost_usd=0.0,
                          detail={"cache": {"source_request_id": entry.request_id}}, body=served(entry, request_id))
        headers_out.update(_headers(request_id, plan, outcome))
        return job, plan, outcome, started, created_at, reservation

    async def complete(self, body: ChatRequest, principal: Principal, request_id: str, headers_out: dict[str, str],
                       endpoint: str = CHAT) -> tuple[dict[str, Any], dict[str, str]]:
        """Serves a non-streaming request; `headers_out` is filled as soon as the route is known. `endpoint` names
        the API the client called (its ledger rows say so), the answer is chat's either way."""
        lookup = await self._lookup(body, principal, request_id, headers_out, endpoint)
        if lookup is not None and lookup.entry is not None:
            job, plan, outcome, started, created_at, reservation = await self._hit(body, principal, request_id,
                                                                                    headers_out, lookup.entry, endpoint)
        else:
            job, plan, outcome, started, created_at, reservation = await self._serve(body, principal, request_id,
                                                                                      headers_out, endpoint)
        self._budgets.settle(reservation, outcome)
        cached = lookup.entry if lookup is not None else None
        self._record(job, plan, principal, outcome, created_at, started, "ok", 200, cached=cached)
        assert outcome.body is not None
        if lookup is not None and cached is None and self._cache is not None:
            self._cache.store(lookup, request_id, outcome.body, outcome, self._reference(outcome))
        return outcome.body, _headers(request_id, plan, outcome) | _cache_header(lookup)

    async def stream(self, body: ChatRequest, principal: Principal, request_id: str, headers_out: dict[str, str],
                     endpoint: str = CHAT) -> tuple[AsyncIterator[bytes], dict[str, str]]:
        """Opens a stream of chat chunks as SSE (errors before the first byte become normal error responses)."""
        lookup = await self._lookup(body, principal, request_id, headers_out, endpoint)
        if lookup is not None and lookup.entry is not None:  # replayed: its cost ($0) is known from the start
            job, plan, outcome, started, created_at, reservation = await self._hit(body, principal, request_id,
                                                                                    headers_out, lookup.entry, endpoint)
            assert outcome.body is not None
            chunks = ChunkStream(outcome, replayed(outcome.body, wants_usage=job.wants_usage))
            headers = _headers(request_id, plan, outcome)
        else:
            job, plan, chunks, started, created_at, reservation = await self._serve(body, principal, request_id,
                                                                                     headers_out, endpoint)
            headers = _headers(request_id, plan, chunks.outcome, deferred=True)
        sse = self._sse(job, plan, principal, chunks, created_at, started, reservation, lookup)
        return sse, headers | _cache_header(lookup)

    async def _sse(self, job: Job, plan: Plan, principal: Principal, chunks: Any, created_at: datetime,
                   started: float, reservation: Reservation | None, lookup: Lookup | None) -> AsyncIterator[bytes]:
        status, code, error = "cancelled", 499, "client disconnected"
        recorded = False
        cached = lookup.entry if lookup is not None else None
        kept: list[bytes] | None = [] if lookup is not None and cached is None and lookup.store else None
        try:
            async for payload in chunks:
                if kept is not None:
                    kept.append(payload)
                yield b"data: " + payload + b"\n\n"
            status, code, error = "ok", 200, ""
            # journalled before [DONE]: once a client has the whole answer, a kill -9 cannot lose its row
            self._finish_stream(job, plan, principal, chunks.outcome, created_at, started, reservation, status, code,
                                cached=cached)
            recorded = True
            if kept is not None and lookup is not None and self._cache is not None:  # whole: never a stream cut short
                self._cache.store(lookup, job.request_id, assembled(kept, chunks.outcome), chunks.outcome,
                                  self._reference(chunks.outcome))
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError as exc:
            error = cancel_reason(exc)
            raise
        except Exception as exc:  # noqa: BLE001 - reported in-band (headers are gone), then recorded
            if isinstance(exc, StreamBroken):
                code, error = 502, exc.message
            else:
                reply = reply_for(exc)
                code, error = reply.status, reply.message
            status = "error"
            yield b"data: " + orjson.dumps({"error": {"message": error, "type": "api_error", "param": None,
                                                      "code": "stream_interrupted"}}) + b"\n\n"
        finally:
            if not recorded:
                self._finish_stream(job, plan, principal, chunks.outcome, created_at, started, reservation, status,
                                    code, error or None, cached=cached)

    def _finish_stream(self, job: Job, plan: Plan, principal: Principal, outcome: Outcome, created_at: datetime,
                       started: float, reservation: Reservation | None, status: str, code: int,
                       error: str | None = None, *, cached: CachedAnswer | None = None) -> None:
        self._budgets.settle(reservation, outcome)
        self._record(job, plan, principal, outcome, created_at, started, status, code, error, cached=cached)

    def _record_failure(self, job: Job, plan: Plan | None, principal: Principal, created_at: datetime,
                        started: float, exc: BaseException, spent: Outcome | None, *, admitted: bool) -> None:
        """Records a failed request with what it spent before failing (never a silent $0). One refused before
        it was admitted (a budget, a rate limit) keeps its rule but has route `none`: no route served it."""
        reply = reply_for(exc)
        outcome = spent or Outcome(route=plan.route if plan and admitted else Route.NONE, provider_model=None)
        attempts = getattr(exc, "attempts", None)
        tried = attempts if isinstance(attempts, int) else 0
        if isinstance(attempts, int):
            outcome.detail["attempts"] = attempts
        if isinstance(exc, Exception):
            status, code, message = "error", reply.status, reply.message
        else:  # cancelled: its client went away (or the server is stopping)
            status, code, message = "cancelled", 499, cancel_reason(exc)
        self._record(job, plan, principal, outcome, created_at, started, status, code, message, tried=tried)

    def _reference(self, outcome: Outcome) -> float | None:
        """What the request would have cost all-hosted: a hosted one what it did cost; others their tokens at the
        reference model's price."""
        if outcome.route is Route.HOSTED:
            return outcome.hosted_cost_usd
        return self._pricing.reference_cost(outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens,
                                            outcome.cache_write_tokens)

    def _record(self, job: Job, plan: Plan | None, principal: Principal, outcome: Outcome, created_at: datetime,
                started: float, status: str, status_code: int, error: str | None = None, *, tried: int = 0,
                cached: CachedAnswer | None = None) -> None:
        """One ledger row and the metrics; `tried` counts a failed request's upstream attempts, which no
        outcome carries; `cached`, the entry a cache hit repeats, whose all-hosted price is the hit's too."""
        latency_s = time.perf_counter() - started
        reference = cached.reference_cost_usd if cached is not None else self._reference(outcome)
        detail = dict(outcome.detail)
        if job.endpoint != CHAT:  # reports tell an embeddings or completions row from a chat one by it
            detail["endpoint"] = job.endpoint
        if outcome.cached_tokens:  # the local prefix cache's hits, or the provider's prompt-cache reads
            detail["cached_prompt_tokens"] = outcome.cached_tokens
        if outcome.cache_write_tokens:  # the provider's prompt-cache writes (Anthropic bills them at 1.25x)
            detail["cache_write_prompt_tokens"] = outcome.cache_write_tokens
        if plan is not None:
            detail["route"] = {"rule": plan.rule, "explanation": plan.explanation, "p_hosted": plan.p_hosted}
        if outcome.attempts:
            detail["attempts"] = outcome.attempts
        record = RequestRecord(
            request_id=job.request_id, created_at=created_at, finished_at=datetime.now(UTC),
            key_id=principal.key_id, team=principal.team, model_alias=job.alias, route=outcome.route.value,
            provider_model=outcome.provider_model, prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens, latency_ms=latency_s * 1000, status=status,
            status_code=status_code, hosted_cost_usd=outcome.hosted_cost_usd, local_cost_usd=outcome.local_cost_usd,
            device_seconds=outcome.device_seconds, wasted_draft_usd=outcome.wasted_draft_usd,
            reference_cost_usd=reference, unpriced=outcome.unpriced, stream=job.stream,
            attempts=max(1, sum(not a.get("skipped") for a in outcome.attempts) or tried),
            rule=plan.rule if plan else None, end_user=job.body.get("user"), error=error,
            escalation_reason=outcome.escalation_reason, detail=detail or None)
        self._open.discard(job.request_id)
        self._writer.record(record)
        self._metrics.observe(route=outcome.route.value, model=job.alias, status=status, latency_s=latency_s,
                              prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
                              hosted_usd=outcome.hosted_cost_usd, local_usd=outcome.local_cost_usd,
                              wasted_usd=outcome.wasted_draft_usd, device_seconds=outcome.device_seconds,
                              unpriced=outcome.unpriced, cached_tokens=outcome.cached_tokens,
                              attempts=outcome.attempts)


def _cache_header(lookup: Lookup | None) -> dict[str, str]:
    return {} if lookup is None else {"x-draftgate-cache": lookup.state}

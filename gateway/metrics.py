"""Prometheus metrics, one registry per app so tests and workers never share counters by accident."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OTHER_MODEL = "other"  # the label of every `model` no alias has: what clients send is not a label value

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """Requests, latency, tokens and dollars by route and model (a configured alias, else `other`)."""

    def __init__(self, models: Iterable[str] = ()) -> None:
        # Labels must stay bounded: a client naming a new model per request (a typo, a scanner) would
        # otherwise add a series per name to every scrape, and to this process's memory, for ever.
        self._models = frozenset(models)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("draftgate_requests", "Requests served (chat completions and embeddings)", ["route", "model", "status"],
                                registry=self.registry)
        self.latency = Histogram("draftgate_request_latency_seconds", "End-to-end chat latency",
                                 ["route", "model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tokens = Counter("draftgate_tokens", "Tokens by direction", ["route", "model", "direction"],
                              registry=self.registry)
        self.cost = Counter("draftgate_cost_usd", "Dollars spent", ["route", "model", "kind"],
                            registry=self.registry)
        self.device_seconds = Counter("draftgate_local_device_seconds", "Local engine device time charged",
                                      ["model"], registry=self.registry)
        self.unpriced = Counter("draftgate_unpriced_requests", "Requests whose price is unknown", ["model"],
                                registry=self.registry)
        self.upstream_attempts = Counter(
            "draftgate_upstream_attempts", "Hosted calls by alias and result (ok, error, cancelled; skipped: the "
            "alias was cooling down): retries and fallbacks show as more attempts than requests",
            ["alias", "result"], registry=self.registry)
        self.ledger_pending = Gauge("draftgate_ledger_pending_rows", "Rows not yet written to the database",
                                    registry=self.registry, multiprocess_mode="livesum")

    def observe(self, *, route: str, model: str, status: str, latency_s: float, prompt_tokens: int,
                completion_tokens: int, hosted_usd: float | None, local_usd: float | None,
                wasted_usd: float, device_seconds: float, unpriced: bool, cached_tokens: int = 0,
                attempts: Sequence[Mapping[str, Any]] = ()) -> None:
        """Counts one finished request, and each of its hosted attempts."""
        for attempt in attempts:
            alias = attempt.get("alias")
            self.upstream_attempts.labels(alias if alias in self._models else OTHER_MODEL, _result(attempt)).inc()
        model = model if model in self._models else OTHER_MODEL
        self.requests.labels(route, model, status).inc()
        self.latency.labels(route, model).observe(latency_s)
        if prompt_tokens:
            self.tokens.labels(route, model, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(route, model, "completion").inc(completion_tokens)
        if cached_tokens:  # of the prompt tokens, those a cache served (the local prefix cache, a provider's prompt cache)
            self.tokens.labels(route, model, "prompt_cached").inc(cached_tokens)
        if device_seconds:
            self.device_seconds.labels(model).inc(device_seconds)
        if unpriced:  # its known part is not its cost: as in the reports, it is counted, not summed
            self.unpriced.labels(model).inc()
            return
        if hosted_usd:
            self.cost.labels(route, model, "hosted").inc(hosted_usd)
        if local_usd:
            self.cost.labels(route, model, "local").inc(local_usd)
        if wasted_usd:
            self.cost.labels(route, model, "wasted_draft").inc(wasted_usd)

    def render(self) -> bytes:
        """This process's metrics or, under `serve --workers N`, every worker's added up.

        With PROMETHEUS_MULTIPROC_DIR set (the CLI sets it for N > 1) each worker writes its values
        to files there, and whichever worker answers a scrape reads all of them.
        """
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


def _result(attempt: Mapping[str, Any]) -> str:
    if attempt.get("skipped"):
        return "skipped"
    if attempt.get("cancelled"):
        return "cancelled"
    return "ok" if attempt.get("status_code") == 200 and not attempt.get("error") else "error"

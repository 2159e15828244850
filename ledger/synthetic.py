"""Synthetic but plausible ledger rows: for the dashboard screenshot and the 1M-row report benchmark.

Prices follow a gpt-4o-class reference ($2.50 / $10 per million tokens) and a GPU at $2.69/hour; the
route mix, token counts and latencies are drawn from fixed distributions with a seed, so runs repeat.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta

from ledger.records import RequestRecord

TEAMS = {"research": ["notebooks", "eval-runner", "alice"], "support": ["helpdesk-bot", "triage"],
         "growth": ["email-drafts", "seo-writer"], "platform": ["ci-bot", "log-summarizer", "oncall"]}
MODELS = ["gpt-4o", "claude-sonnet", "local/diffusiongemma", "auto"]
LOCAL_MODEL = "draftgate/tiny-diffusiongemma"  # what the gateway records as the model that answered locally
HOSTED_MODELS = ["openai/gpt-4o", "anthropic/claude-sonnet"]
REASONS = ["json_schema: draft is not valid JSON", "python_tests: 2 of 5 tests failed",
           "min_confidence: step cap hit on canvas 1", "regex: no final answer line"]
IN_PER_TOK, OUT_PER_TOK, DEVICE_USD_PER_S = 2.5e-6, 10e-6, 2.69 / 3600


def synthetic_records(count: int, *, end: datetime, days: int = 30, seed: int = 0, prefix: str = "syn",
                      users: int = 0) -> Iterator[RequestRecord]:
    """`users`: how many end users the requests name (each one drawn evenly; 0: none, and the draws of the other
    fields are those of a ledger without users)."""
    rng = random.Random(seed)
    user_rng = random.Random(seed + 1)
    keys = [(team, f"key_{team[:3]}_{i}") for team, names in TEAMS.items() for i in range(len(names))]
    span = days * 86400
    for i in range(count):
        team, key_id = rng.choice(keys)
        created = end - timedelta(seconds=rng.random() * span)
        prompt, completion = int(rng.lognormvariate(5.5, 0.8)), int(rng.lognormvariate(4.8, 0.7))
        draw = rng.random()
        route = "local" if draw < 0.62 else "hosted" if draw < 0.9 else "escalated"
        reference = prompt * IN_PER_TOK + completion * OUT_PER_TOK
        device = completion * 0.004 * rng.uniform(0.5, 1.5) if route != "hosted" else 0.0
        unpriced = rng.random() < 0.005
        hosted = None if route == "local" or unpriced else reference * rng.uniform(0.9, 1.1)
        latency = rng.lognormvariate(5.7, 0.5) if route == "local" else rng.lognormvariate(7.0, 0.6)
        if route == "escalated":
            latency += rng.lognormvariate(5.7, 0.5)
        yield RequestRecord(
            request_id=f"{prefix}-{seed}-{i}", created_at=created,
            finished_at=created + timedelta(milliseconds=latency), key_id=key_id, team=team,
            model_alias=rng.choice(MODELS), route=route,
            provider_model=LOCAL_MODEL if route == "local" else rng.choice(HOSTED_MODELS),
            prompt_tokens=prompt, completion_tokens=completion, latency_ms=latency,
            status="error" if rng.random() < 0.01 else "ok", status_code=200,
            hosted_cost_usd=hosted, local_cost_usd=device * DEVICE_USD_PER_S if route == "local" else None,
            device_seconds=device, wasted_draft_usd=device * DEVICE_USD_PER_S if route == "escalated" else 0.0,
            reference_cost_usd=None if unpriced else (hosted if route == "hosted" else reference),
            unpriced=unpriced, rule="default", end_user=f"user-{user_rng.randrange(users)}" if users else None,
            escalation_reason=rng.choice(REASONS) if route == "escalated" else None)

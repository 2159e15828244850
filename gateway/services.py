"""The composition root: builds every service once per app from settings and the YAML config."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import policies
from gateway.auth import Authenticator, StaticKey
from gateway.budgets import Budgets
from gateway.cache import CacheFront
from gateway.metrics import Metrics
from gateway.pipeline import ChatPipeline
from gateway.settings import Settings
from ledger import Database, KeyStore, LedgerWriter, Price, PriceBook, ResponseCache
from ledger.budgets import BudgetStore
from local_engine import EngineConfig, LocalBackend, backend_capabilities, choice_limit, create_backend
from router import Cascade, Embedder, Executor, HostedClient, HostedModel, Planner, Pricing, priced_judge

log = logging.getLogger("draftgate")
READY_TIMEOUT_S = 2.0  # a database slower than this to answer SELECT 1 is not ready to take the ledger's rows


def load_config(settings: Settings) -> policies.GatewayConfig:
    """The YAML config named by the settings, or the embedded defaults. Raises policies.ConfigError."""
    if settings.config is None:
        return policies.default_config()
    return policies.load(settings.config, os.environ)


def hosted_models(config: policies.GatewayConfig) -> dict[str, HostedModel]:
    return {m.name: HostedModel(alias=m.name, model=m.model, api_base=m.api_base, api_key=m.api_key,
                                timeout_s=m.timeout_s, max_retries=m.max_retries, fallbacks=tuple(m.fallbacks),
                                allowed_fails=m.allowed_fails, cooldown_time=m.cooldown_time)
            for m in config.models}


def price_overrides(config: policies.GatewayConfig) -> dict[str, Price]:
    return {m.name: Price(m.price.input_per_mtok, m.price.output_per_mtok, m.price.cached_input_per_mtok,
                          m.price.cache_write_input_per_mtok)
            for m in config.models if m.price}


def vector_size_mismatches(config: policies.GatewayConfig, prices: PriceBook | None = None) -> list[str]:
    """Embedding aliases whose fallbacks return vectors of another length (LiteLLM's map lists the sizes): an
    embeddings request the fallback serves gets vectors the client's index cannot take, with no error."""
    prices = prices or PriceBook(price_overrides(config))
    models = {m.name: m for m in config.models}
    problems = []
    for alias in config.models:
        size = prices.vector_size(alias.model)
        for name in alias.fallbacks:
            other = prices.vector_size(models[name].model) if name in models else None
            if size is not None and other is not None and other != size:
                problems.append(f"models: {alias.name} ({alias.model}, {size}-dimension vectors) falls back to "
                                f"{name} ({models[name].model}, {other}): an embeddings request it serves gets "
                                f"vectors of another length")
    return problems


def engine_config(config: policies.GatewayConfig) -> EngineConfig:
    local = config.local
    return EngineConfig(model=local.model, backend=local.backend, device=local.device, dtype=local.dtype,
                        threads=local.threads, max_batch_size=local.max_batch_size, max_queue=local.max_queue,
                        device_usd_per_hour=local.device_usd_per_hour, max_tokens=local.max_tokens,
                        prefix_cache_tokens=local.prefix_cache_tokens,
                        prefix_cache_min_tokens=local.prefix_cache_min_tokens,
                        first_canvas_length=local.first_canvas_length, max_model_len=local.max_model_len,
                        api_bases=local.api_bases, api_key=local.api_key, timeout_s=local.timeout_s)


def prompt_scorer() -> Any:
    """The bundled difficulty classifier, for rules on `p_hosted` (loaded only when a rule uses it)."""
    from router.classifier import DifficultyClassifier

    classifier = DifficultyClassifier.load()
    return lambda text: classifier.score([text])[0]


def build_planner(config: policies.GatewayConfig, hosted: HostedClient, *, judge: Any = None) -> Planner:
    """The policy's planner, scoring prompts with the bundled classifier when a rule uses `p_hosted`: the
    gateway and `draftgate route explain` build it here, so both decide a request alike."""
    policy = policies.PolicySet(config.policies)
    return Planner(policy, hosted, local_alias=config.local.alias, local_enabled=config.local.enabled,
                   judge=judge, score_prompt=prompt_scorer() if policy.needs_p_hosted else None,
                   local_capabilities=replace(backend_capabilities(config.local.backend),
                                                          max_choices=choice_limit(engine_config(config))))


@dataclass
class Services:
    """Everything a request needs, built once; `lifespan` starts and stops what runs in the background."""

    settings: Settings
    config: policies.GatewayConfig
    db: Database
    writer: LedgerWriter
    keys: KeyStore
    auth: Authenticator
    prices: PriceBook
    hosted: HostedClient
    metrics: Metrics
    planner: Planner
    pricing: Pricing
    budgets: Budgets
    local: LocalBackend | None = None
    executor: Executor | None = None
    pipeline: ChatPipeline | None = None
    cache: CacheFront | None = None  # the response cache, when the config enables it
    loop: asyncio.AbstractEventLoop | None = None
    _ping: asyncio.Future[bool] | None = None  # the database ping /readyz is waiting on, if one is running

    @classmethod
    def build(cls, settings: Settings, config: policies.GatewayConfig | None = None) -> Services:
        """Cheap, synchronous construction; the model loads in `lifespan`."""
        # LiteLLM must never fetch its price map from the internet at import time.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        config = config or load_config(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url(config.database_url))
        db.migrate()
        keys = KeyStore(db)
        master = settings.master_key.get_secret_value() if settings.master_key else config.master_key
        static = [StaticKey(k.name, k.key, k.team, tuple(k.models) if k.models is not None else None)
                  for k in config.keys]
        auth = Authenticator(master, static, keys)
        prices = PriceBook(price_overrides(config))
        hosted = HostedClient(hosted_models(config))
        pricing = Pricing(prices, hosted, config.reference_model)
        planner = build_planner(config, hosted, judge=priced_judge(hosted, pricing))
        budgets = Budgets(config, BudgetStore(db), pricing, hosted, local_max_tokens=config.local.max_tokens)
        writer = LedgerWriter(db, settings.journal_path(), recover_glob="ledger-*.journal.*",
                              flush_interval_s=settings.ledger_flush_interval_s)
        return cls(settings=settings, config=config, db=db, writer=writer, keys=keys, auth=auth, prices=prices,
                   hosted=hosted, metrics=Metrics(config.requestable_aliases()), planner=planner, pricing=pricing, budgets=budgets)

    def aliases(self) -> list[str]:
        """Every alias a client may send as `model` (the configuration's `requestable_aliases`)."""
        return self.config.requestable_aliases()

    def serves(self, alias: str) -> bool:
        return alias in self.aliases()

    def warn_about_config(self) -> None:
        """Loud startup warnings: open mode, and models whose price is unknown (never silently $0)."""
        if self.auth.open_mode:
            log.warning("no master_key configured: the gateway accepts requests without a key (open mode)")
        for alias in self.hosted.aliases:
            model = self.hosted.get(alias)
            if self.pricing.hosted_cost(model, 1, 1) is None:
                log.warning("model %s (%s) has no known price: its requests are recorded as unpriced", alias,
                            model.model)
        for problem in vector_size_mismatches(self.config, self.prices):
            log.warning("%s", problem)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.writer.start()
        if self.config.local.enabled and self.settings.load_local_engine:
            self.local = await asyncio.to_thread(create_backend, engine_config(self.config))
            await self.local.start()
        self.executor = Executor(self.hosted, self.local, self.pricing, local_alias=self.config.local.alias,
                                 local_max_tokens=self.config.local.max_tokens)
        embedder = Embedder(self.hosted, self.pricing,
                            unembeddable=[a for a in self.aliases() if a not in self.hosted])  # local, auto
        cache = self.config.cache
        if cache.enabled:
            self.cache = CacheFront(ResponseCache(self.db, max_entries=cache.max_entries), cache)
        self.pipeline = ChatPipeline(planner=self.planner, executor=self.executor, cascade=Cascade(self.executor),
                                     embedder=embedder, writer=self.writer, metrics=self.metrics, pricing=self.pricing,
                                     budgets=self.budgets, cache=self.cache)
        self.warn_about_config()

    async def stop(self) -> None:
        """Drains: the engine stops taking work, the ledger is flushed, connections close."""
        if self.local is not None:
            await self.local.stop()
        if self.pipeline is not None and not await self.pipeline.drained(5.0):
            log.warning("stopping with requests still unrecorded: their rows are lost")
        await self.budgets.drain()
        if self.cache is not None:
            await self.cache.drain()
        await self.writer.close()
        await self.hosted.aclose()
        self.db.dispose()

    @asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def ready(self) -> dict[str, bool]:
        """What /readyz reports: the database answers (within READY_TIMEOUT_S) and the local model (if enabled)
        is loaded. One ping at a time: a database that stopped answering holds one worker thread, not one per
        probe (a probe every few seconds would otherwise take the whole thread pool the gateway runs on)."""
        if self._ping is None or self._ping.done():
            self._ping = asyncio.ensure_future(asyncio.to_thread(self.db.ping))
        try:
            database = await asyncio.wait_for(asyncio.shield(self._ping), READY_TIMEOUT_S)
        except TimeoutError:
            database = False
        checks = {"database": database}
        if self.config.local.enabled and self.settings.load_local_engine:
            checks["local_model"] = self.local is not None and await self.local.is_ready()
        return checks


def new_key_problem(config: policies.GatewayConfig, name: str, team: str | None) -> tuple[str, str] | None:
    """(field, why) a virtual key cannot be created as asked, or None. A team the config does not declare
    would escape that team's budget (a typo: `Research` for `research`); a name a config key has makes
    policy rules that match `key:` by name ambiguous (another live virtual key's name is refused by the
    database itself: KeyNameTakenError). Without declared teams, any team labels spend."""
    declared = [t.name for t in config.teams]
    if team is not None and declared and team not in declared:
        return "team", f"team {team!r} is not declared in the config (declared: {', '.join(declared)})"
    if any(k.name == name for k in config.keys):
        return "name", f"a key in the config is already named {name!r}"
    return None

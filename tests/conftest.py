"""Shared fixtures: temp data dirs, the simulated provider, and a real gateway on a free port."""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers.models.diffusion_gemma import (
    DiffusionGemmaForBlockDiffusion,
    DiffusionGemmaGenerationConfig,
    EntropyBoundSamplerConfig,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gateway.app import create_app
from gateway.settings import Settings
from gateway.simulator import Simulator, SimulatorServer
from local_engine.training.config import GENERATION, tiny_config
from local_engine.training.tokenizer import build_tokenizer
from tests.support.postgres import POSTGRES_URL, fresh_schema
from tests.support.servers import serve_in_thread, simulator_server

MASTER_KEY = "sk-master-test-0123456789"
# Random weights give near-uniform logits: which position has the lowest entropy is then decided by float
# rounding, which differs with the batch's composition. Accepting every sampled position makes a random
# model's answer a function of its seed alone, so tests can compare answers token for token.
ACCEPT_ALL = EntropyBoundSamplerConfig(entropy_bound=1e9)


@pytest.fixture(autouse=True)
def _metrics_mode_is_left_as_found() -> Iterator[None]:
    """`serve --workers` code sets PROMETHEUS_MULTIPROC_DIR in the process: a test that leaves it set puts every
    later gateway of its pytest worker in multiprocess mode, counting other gateways' metrics (order-dependent
    failures far from the cause). The leaking test fails instead."""
    before = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    yield
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") == before, "this test left PROMETHEUS_MULTIPROC_DIR changed"


@pytest.fixture(autouse=True)
def _logging_is_left_as_found() -> Iterator[None]:
    """`serve` run in-process (CliRunner) configures logging with handlers on the runner's stderr, which is closed
    once the command returns: every later log line of the pytest worker (alembic's at each migrate) became a
    '--- Logging error ---' in the next CliRunner's output, and its JSON did not parse. Each logger's handlers,
    level and flags are put back after every test; loggers a test created lose what it gave them."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    saved = {lg: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers}
    yield
    for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        if isinstance(lg, logging.Logger):
            handlers, level, propagate, disabled = saved.get(lg, ([], logging.NOTSET, True, False))
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    """A fresh simulated provider per test."""
    with simulator_server(Simulator()) as server:
        yield server


@dataclass
class Gateway:
    """A running gateway: its URL, the app (for services) and its settings."""

    url: str
    app: Any
    settings: Settings
    _ctx: Any = None

    def stop(self) -> None:
        """Graceful shutdown (lifespan: drain, flush the ledger)."""
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def services(self) -> Any:
        return self.app.state.services


def hosted_config(sim_url: str, extra: str = "", *, master: bool = True, local: bool = False) -> str:
    """A YAML config with two simulated hosted models (priced like gpt-4o-mini via the real map)."""
    head = "master_key: os.environ/DRAFTGATE_TEST_MASTER\n" if master else ""
    return head + textwrap.dedent(f"""\
        reference_model: gpt-4o-mini
        models:
          - name: gpt-4o-mini
            model: openai/gpt-4o-mini
            api_base: {sim_url}
            api_key: os.environ/DRAFTGATE_TEST_UPSTREAM_KEY
            timeout_s: 2
            max_retries: 2
            fallbacks: [backup]
          - name: backup
            model: openai/gpt-4o
            api_base: {sim_url}
            api_key: os.environ/DRAFTGATE_TEST_UPSTREAM_KEY
            timeout_s: 2
            max_retries: 0
        local:
          enabled: {'true' if local else 'false'}
        """) + extra


@pytest.fixture
def gateway_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Gateway]]:
    """Starts gateways from YAML text on temp SQLite ledgers; all are stopped after the test."""
    monkeypatch.setenv("DRAFTGATE_TEST_MASTER", MASTER_KEY)
    monkeypatch.setenv("DRAFTGATE_TEST_UPSTREAM_KEY", "sk-upstream-secret-abc")
    stack: list[Gateway] = []

    def start(yaml_text: str, data_dir: Path | None = None, **settings: Any) -> Gateway:
        config_path = tmp_path / f"draftgate-{len(stack)}.yaml"
        config_path.write_text(yaml_text)
        s = Settings(config=config_path, data_dir=data_dir or tmp_path / "data", **settings)
        app = create_app(s)
        ctx = serve_in_thread(app)
        gateway = Gateway(url=ctx.__enter__(), app=app, settings=s, _ctx=ctx)
        stack.append(gateway)
        return gateway

    yield start
    for gateway in reversed(stack):
        gateway.stop()


def save_random_checkpoint(out: Path, trained_canvas_lengths: list[int] | None = None) -> Path:
    """A tiny random DiffusionGemma (8-token canvases) saved with save_pretrained into `out`."""
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(hidden=64, layers=2, canvas_length=8))
    if trained_canvas_lengths:
        model.config.trained_canvas_lengths = trained_canvas_lengths
    model.generation_config = DiffusionGemmaGenerationConfig(**{**GENERATION, "max_new_tokens": 8,
                                                                "max_denoising_steps": 4,
                                                                "sampler_config": ACCEPT_ALL})
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DiffusionGemma saved with save_pretrained: engine tests never need the trained one."""
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny-random"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One database several gateways share: a SQLite file, or a fresh schema on the test PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("DRAFTGATE_TEST_POSTGRES_URL is not set (scripts/postgres.sh starts one; CI does)")
    with fresh_schema(POSTGRES_URL) as url:
        yield url

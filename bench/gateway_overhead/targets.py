"""The four paths under test, each started as its own process on a free 127.0.0.1 port.

- direct:    client -> fake upstream
- draftgate: client -> `draftgate serve` (master key, a virtual key, policy rules, metrics, SQLite ledger)
- litellm:   client -> `litellm --config` proxy (own venv, litellm==1.109.1, master key, no database)
- relay:     client -> a bare Starlette + httpx relay (the floor)

Every gateway runs one worker process with uvloop + httptools and no access log.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from procs import Child, Fleet, clean_environ, free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODEL = "bench-model"
UPSTREAM_KEY = "sk-upstream-bench"
MASTER_KEY = "sk-bench-master-0123456789"
CHAT_PATH = "/v1/chat/completions"
OFFLINE = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class Target:
    """A started path under test: where to send requests, with which key, and which process serves them."""

    name: str
    child: Child
    key: str
    start_s: float = 0.0
    virtual_key: str | None = None  # draftgate: a key from `draftgate keys create`, for the extra c=1 row

    @property
    def port(self) -> int:
        return self.child.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CHAT_PATH}"


DRAFTGATE_YAML = """\
master_key: os.environ/DRAFTGATE_BENCH_MASTER_KEY
reference_model: {model}
models:
  - name: {model}
    model: openai/gpt-4o-mini          # openai/... -> draftgate's direct shared-httpx transport
    api_base: http://127.0.0.1:{upstream_port}/v1
    api_key: os.environ/DRAFTGATE_BENCH_UPSTREAM_KEY
    price: {{input_per_mtok: 0.15, output_per_mtok: 0.60}}
    timeout_s: 60
    max_retries: 2
local:
  enabled: false                       # hosted path only: the benchmark measures the gateway, not a model
teams:
  - name: bench
policies:
  default: requested
  rules:                               # evaluated on every request; none matches the benchmark body
    - name: tools-go-hosted
      when: {{has_tools: true}}
      action: {{hosted: {model}}}
    - name: long-prompts-hosted
      when: {{prompt_tokens: {{gt: 8000}}}}
      action: {{hosted: {model}}}
    - name: batch-tier
      when: {{metadata: {{tier: batch}}}}
      action: {{hosted: {model}}}
"""

LITELLM_YAML = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: {upstream_key}
general_settings:
  master_key: {master_key}
"""


def start_upstream(fleet: Fleet, cpus: set[int] | None) -> Target:
    port = free_port()
    child = fleet.start("upstream", [sys.executable, str(HERE / "upstream.py"), "--port", str(port)], port,
                        cpus=cpus)
    return Target("direct", child, UPSTREAM_KEY, fleet.wait_healthy(child, "/health", 20))


def _draftgate_bin() -> str:
    candidate = Path(sys.executable).with_name("draftgate")
    return str(candidate) if candidate.exists() else "draftgate"


def start_draftgate(fleet: Fleet, upstream_port: int, cpus: set[int] | None, name: str = "draftgate",
                    extra_env: dict[str, str] | None = None) -> Target:
    """Writes the YAML, creates a virtual key with the CLI (as an operator would), starts `draftgate serve`.
    `extra_env` (ab.py: PYTHONPATH of another checkout) reaches both commands."""
    config = fleet.workdir / "draftgate.yaml"
    config.write_text(DRAFTGATE_YAML.format(model=MODEL, upstream_port=upstream_port))
    env = {**OFFLINE, "DRAFTGATE_BENCH_MASTER_KEY": MASTER_KEY, "DRAFTGATE_BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
           "DRAFTGATE_DATA_DIR": str(fleet.workdir / "draftgate-data"), "DRAFTGATE_LOG_LEVEL": "warning",
           **(extra_env or {})}
    created = subprocess.run([_draftgate_bin(), "keys", "create", "--name", "bench-client", "--team", "bench",
                              "--config", str(config)], capture_output=True, text=True, timeout=120,
                             env={**clean_environ(), **env}, cwd=fleet.workdir)
    found = re.search(r"^key:\s+(\S+)", created.stdout, re.MULTILINE)
    if created.returncode != 0 or found is None:
        raise RuntimeError(f"draftgate keys create failed: {created.stdout[-500:]} {created.stderr[-1500:]}")
    port = free_port()
    child = fleet.start(name, [_draftgate_bin(), "serve", "--config", str(config), "--host", "127.0.0.1",
                                      "--port", str(port)], port, env=env, cpus=cpus, cwd=fleet.workdir)
    target = Target(name, child, MASTER_KEY, fleet.wait_healthy(child, "/healthz", 120))
    target.virtual_key = found.group(1)
    return target


def start_litellm(fleet: Fleet, upstream_port: int, venv: Path, cpus: set[int] | None) -> Target:
    """The LiteLLM proxy from its own venv: one uvicorn worker, no database, access log off (LITELLM_LOG)."""
    config = fleet.workdir / "litellm.yaml"
    config.write_text(LITELLM_YAML.format(model=MODEL, upstream_port=upstream_port, upstream_key=UPSTREAM_KEY,
                                          master_key=MASTER_KEY))
    env = {**OFFLINE, "LITELLM_LOG": "WARNING", "LITELLM_MODE": "PRODUCTION"}
    port = free_port()
    child = fleet.start("litellm", [str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
                                    "--port", str(port), "--num_workers", "1"], port, env=env, cpus=cpus,
                        cwd=fleet.workdir)
    return Target("litellm", child, MASTER_KEY, fleet.wait_healthy(child, "/health/liveliness", 180))


def start_relay(fleet: Fleet, upstream_port: int, cpus: set[int] | None) -> Target:
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "relay:app", "--host", "127.0.0.1",
            "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning"]
    child = fleet.start("relay", argv, port, env={"RELAY_UPSTREAM": f"http://127.0.0.1:{upstream_port}/v1"},
                        cpus=cpus)
    return Target("relay", child, "none", fleet.wait_healthy(child, "/healthz", 30))

"""docker-compose.yml against the code: each service built from this repository runs its command as compose would
run it (its environment interpolated from the host's, its mounted config) and succeeds. Docker is not needed: the
command runs here, as `python -m gateway.cli`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MASTER = "sk-compose-master-0123456789"
# What README's draftgate.yaml reads from the environment that the compose file provides: the master key and
# OpenAI's key (the gateway service passes both).
CONFIG = """\
master_key: os.environ/DRAFTGATE_MASTER_KEY
reference_model: gpt-4o-mini
models:
  - name: gpt-4o-mini
    model: openai/gpt-4o-mini
    api_key: os.environ/OPENAI_API_KEY
local:
  enabled: false
"""


def _interpolate(value: str, host: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}` against the host environment."""
    def one(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3) or ""
        if host.get(name):
            return host[name]
        assert op != ":?", f"compose would refuse to start: {rest}"
        return rest if op == ":-" else ""
    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def _service_run(service: dict[str, Any], tmp_path: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    """Runs `command` with the service's environment, its config volume mapped to a file here and its PostgreSQL
    URL to a SQLite file (the ledger's schema and code paths are the same)."""
    host = {"DRAFTGATE_MASTER_KEY": MASTER}  # what the compose file requires of the host; nothing else set
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAFTGATE_") and k not in (
        "DATABASE_URL", "OPENAI_API_KEY", "PROMETHEUS_MULTIPROC_DIR")}
    config = tmp_path / "draftgate.yaml"
    config.write_text(CONFIG)
    mounts = {target: source for source, target, *_ in (v.split(":") for v in service.get("volumes", []))}
    for name, value in (service.get("environment") or {}).items():
        value = _interpolate(str(value), host)
        if name == "DRAFTGATE_CONFIG":
            assert mounts.get(value) == "./draftgate.yaml", (value, mounts)  # the file compose mounts there
            value = str(config)
        elif name == "DATABASE_URL":
            assert value.startswith("postgresql+psycopg://"), value
            value = f"sqlite:///{tmp_path / 'ledger.db'}"
        env[name] = value
    env.update(PYTHONPATH=str(REPO), DRAFTGATE_DATA_DIR=str(tmp_path / "data"))
    assert command[0] == "draftgate", command
    return subprocess.run([sys.executable, "-m", "gateway.cli", *command[1:]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def _services() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"])


def test_the_migrate_service_runs_with_the_config_the_gateway_service_reads(tmp_path: Path) -> None:
    """`migrate` reads the same draftgate.yaml as the gateway, so it needs every variable the file names: it had
    only DATABASE_URL and DRAFTGATE_CONFIG, failed on `master_key: os.environ/DRAFTGATE_MASTER_KEY`, and since the
    gateway waits for it to complete successfully, `docker compose up` started no gateway at all."""
    services = _services()
    gateway = _service_run(services["gateway"], tmp_path, ["draftgate", "check-config"])
    assert gateway.returncode == 0, gateway.stderr  # the config is one the gateway service can serve
    migrate = _service_run(services["migrate"], tmp_path, services["migrate"]["command"])
    assert migrate.returncode == 0, migrate.stderr
    assert "ledger schema is up to date" in migrate.stdout


def _seconds(duration: str) -> float:
    """A compose duration (`40s`, `1m30s`, `2m`) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def test_compose_gives_the_gateway_time_to_drain_before_it_kills_it() -> None:
    """`docker compose stop`/`down` sends SIGTERM, then SIGKILL after the service's `stop_grace_period`: docker's
    default is 10 s, under the gateway's own drain (DRAFTGATE_SHUTDOWN_TIMEOUT_S, 25 s by default, then the
    cancelled requests' rows are recorded and the ledger flushed), so a request still running at 10 s was killed
    with its answer and its ledger row lost. The grace period must cover the drain plus the flush after it."""
    from gateway.settings import Settings

    gateway = _services()["gateway"]
    drain = float((gateway.get("environment") or {}).get("DRAFTGATE_SHUTDOWN_TIMEOUT_S",
                                                           Settings.model_fields["shutdown_timeout_s"].default))
    grace = _seconds(str(gateway.get("stop_grace_period", "10s")))
    assert grace >= drain + 10, (grace, drain)


def test_each_gateway_replica_journals_to_a_volume_that_outlives_its_container() -> None:
    """The gateway's crash journal (rows not yet in the database) was in the container's own filesystem: a replica
    killed before its flush (OOM, `docker kill`, a host crash) and then recreated lost those rows. The data dir must
    be a named volume, writable by the image's user, and the replicas sharing it must journal to files of their
    own: every replica is pid 1 and has the same environment, only its host name differs."""
    from gateway.settings import Settings

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    gateway = compose["services"]["gateway"]
    dockerfile = (REPO / "Dockerfile").read_text()
    workdir = re.findall(r"^WORKDIR\s+(\S+)", dockerfile, re.MULTILINE)[-1]
    environment = gateway.get("environment") or {}
    data_dir = str(environment.get("DRAFTGATE_DATA_DIR") or Path(workdir) / Settings.model_fields["data_dir"].default)
    mounts = {target: source for source, target, *_ in (v.split(":") for v in gateway["volumes"])}
    assert data_dir in mounts, (data_dir, mounts)
    assert mounts[data_dir] in (compose.get("volumes") or {}), "a named volume (a bind mount or an anonymous one " \
        "is not kept, or not found again, when compose recreates the container)"
    user = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)[-1]
    # a new named volume takes its owner from the image's folder: without it the non-root gateway cannot write
    assert re.search(rf"chown[^\n]*\b{user}\b[^\n]*\s{re.escape(data_dir)}\b", dockerfile), dockerfile
    # what would give every replica the same journal name
    assert "hostname" not in gateway and "DRAFTGATE_WORKER_ID" not in environment

"""Real processes for crash, drain and load tests: `draftgate serve` and the simulator, on 127.0.0.1.

Each process writes its output to a file (a full pipe would stall it under load) and is ended by the
context manager that started it, whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from ledger import Database

REPO = Path(__file__).resolve().parents[2]
MASTER_KEY = "sk-master-proc-0123456789"
UPSTREAM_KEY = "sk-upstream-secret-proc-9f8e7d6c5b4a"


def free_port() -> int:
    """A port nothing listens on right now (the gateway binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_config(sim_url: str, *, local: bool = False, timeout_s: float = 10) -> str:
    """draftgate.yaml for a subprocess: one hosted alias on the simulator, optionally the bundled model."""
    return textwrap.dedent(f"""\
        master_key: os.environ/DRAFTGATE_PROC_MASTER
        reference_model: gpt-4o-mini
        models:
          - name: gpt-4o-mini
            model: openai/gpt-4o-mini
            api_base: {sim_url}
            api_key: os.environ/DRAFTGATE_PROC_UPSTREAM_KEY
            timeout_s: {timeout_s}
            max_retries: 0
        local:
          enabled: {'true' if local else 'false'}
          max_queue: 256
        """)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAFTGATE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True",
               DRAFTGATE_PROC_MASTER=MASTER_KEY, DRAFTGATE_PROC_UPSTREAM_KEY=UPSTREAM_KEY,
               PYTHONPATH=str(REPO))
    env.update(extra or {})
    return env


@contextlib.contextmanager
def simulator_process(*, delay_s: float = 0.0) -> Iterator[str]:
    """The simulated provider in its own process (the test's event loop stays free for clients)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.simulator_main", "--delay-s", str(delay_s)],
                            cwd=REPO, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), f"simulator did not start: {url!r}"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class GatewayProcess:
    """A `draftgate serve` process on a data dir; start again after a kill to test recovery."""

    config: Path
    data_dir: Path
    log: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None  # where serve starts (default: the data dir's parent)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, ready_timeout_s: float = 120) -> GatewayProcess:
        """Starts the process and returns once /readyz says ready (journal replay happens before that)."""
        self.port = free_port()
        env = _env({"DRAFTGATE_DATA_DIR": str(self.data_dir), "DRAFTGATE_LOG_LEVEL": "warning",
                    **(self.env or {})})
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config), "--port",
                 str(self.port)], cwd=self.cwd or self.data_dir.parent, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log.read_text()
                raise RuntimeError(f"draftgate serve exited with {self.proc.returncode}:\n{log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        raise TimeoutError(f"draftgate serve was not ready in {ready_timeout_s}s:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait: uvicorn drains in-flight requests, then the lifespan flushes the ledger."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        """Whatever state the test left it in, the process is gone afterwards."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def rss_bytes(self) -> int:
        """Resident set size of the server process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line")

    def database(self) -> Database:
        return Database(f"sqlite:///{self.data_dir / 'ledger.db'}")

    def journal_segments(self) -> list[Path]:
        return sorted(self.data_dir.glob("ledger-*.journal.*"))

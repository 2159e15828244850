"""The Python-tests verifier: runs a code answer against user tests in a locked-down subprocess.

The parent enforces wall time (killing the whole process group), CPU, memory, file-size, open-file and
process limits, an empty environment (no inherited secrets) and a fresh temp directory; the child's
harness adds an audit hook that denies sockets, process creation, ctypes and file access outside that
directory. A stopped or denied run is a failed verdict, never an exception, and never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import secrets
import signal
import sys
import tempfile
from pathlib import Path

from router.verifiers.base import Draft, Verdict

HARNESS = Path(__file__).resolve().parent / "harness.py"
CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    """The first fenced Python block of an answer, or the whole answer when it has none."""
    match = CODE_BLOCK.search(text)
    return match.group(1) if match else text


def _limits(memory_mb: int, cpu_s: int) -> None:
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (10 * 1024 * 1024, 10 * 1024 * 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(ValueError, OSError):  # not enforced for root; the audit hook covers it
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


class PythonTestsVerifier:
    name = "python_tests"

    def __init__(self, tests: str, timeout_s: float = 5.0, memory_mb: int = 256) -> None:
        if not tests.strip():
            raise ValueError("python_tests needs `tests`")
        if not 0 < timeout_s <= 60 or not 32 <= memory_mb <= 4096:
            raise ValueError("python_tests: timeout_s in (0, 60], memory_mb in [32, 4096]")
        compile(tests, "tests.py", "exec")  # a syntax error in the config's tests is a config error
        self._tests, self._timeout_s, self._memory_mb = tests, timeout_s, memory_mb

    async def verify(self, draft: Draft) -> Verdict:
        with tempfile.TemporaryDirectory(prefix="draftgate-sandbox-") as work:
            Path(work, "solution.py").write_text(extract_code(draft.text))
            Path(work, "tests_user.py").write_text(self._tests)
            result_name = f"result-{secrets.token_hex(16)}.json"
            outcome = await self._run(work, result_name)
            if outcome is not None:
                return Verdict(self.name, False, outcome)
            result_file = Path(work, result_name)
            if not result_file.exists():
                return Verdict(self.name, False, "the sandbox ended without a result (crashed or was killed)")
            report = json.loads(result_file.read_text())
        return self._verdict(report)

    async def _run(self, work: str, result_name: str) -> str | None:
        """Runs the harness; returns why it was stopped, or None when it finished."""
        cpu_s = int(self._timeout_s) + 1
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", str(HARNESS), cwd=work, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, preexec_fn=lambda: _limits(self._memory_mb, cpu_s))
        try:
            _, stderr = await asyncio.wait_for(proc.communicate((result_name + "\n").encode()), self._timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return f"stopped: the code ran longer than {self._timeout_s:g}s (infinite loop?)"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode and proc.returncode < 0:
            sig = signal.Signals(-proc.returncode).name
            return f"stopped by {sig} (CPU or memory limit)"
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] if stderr else []
        if "MemoryError" in "".join(tail):
            return f"stopped: the code exceeded {self._memory_mb} MB of memory"
        return None

    def _verdict(self, report: dict[str, object]) -> Verdict:
        if report.get("error"):
            stage = "the answer's code" if report.get("stage") == "solution" else "the tests"
            return Verdict(self.name, False, f"{stage} raised: {report['error']}", report)
        tests = report.get("tests") or []
        assert isinstance(tests, list)
        failed = [t for t in tests if not t["passed"]]
        if failed:
            reasons = "; ".join(f"{t['name']} failed: {t['message']}" for t in failed[:5])
            return Verdict(self.name, False, reasons, report)
        return Verdict(self.name, True, f"{len(tests)} test function(s) passed" if tests else
                       "the tests' top-level assertions passed", report)

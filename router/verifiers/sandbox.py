"""The Python-tests verifier: runs a code answer against user tests in a locked-down subprocess.

The parent enforces wall time (killing the whole process group), CPU, memory, file-size, open-file and
process limits, an empty environment (no inherited secrets) and a fresh temp directory; the child's
harness adds an audit hook that denies sockets, process creation, ctypes and file access outside that
directory. A stopped or denied run is a failed verdict, never an exception, and never blocks the loop.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import logging
import os
import re
import resource
import secrets
import signal
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from policies import tests_problem
from router.verifiers.base import Draft, Verdict

HARNESS = Path(__file__).resolve().parent / "harness.py"
log = logging.getLogger("draftgate.verifiers")
CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    """The first fenced Python block of an answer, or the whole answer when it has none."""
    match = CODE_BLOCK.search(text)
    return match.group(1) if match else text


OUTPUT_LIMIT = 10 * 1024 * 1024  # bytes of any file the code writes, its stdout and stderr included


def _limits(memory_mb: int, cpu_s: int, uid: int | None) -> None:
    """In the child, before exec. As root, the child becomes `uid`, a user of its own: file permissions then
    keep it out of everything the gateway's user owns (/proc/<gateway>/environ, its data), and the process
    limit, which root ignores, applies: one process, no fork."""
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT, OUTPUT_LIMIT))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if uid is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        return
    with contextlib.suppress(ValueError, OSError):  # the gateway's user has processes: no fork is left
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


@functools.cache
def _others_can_run_python() -> bool:
    """Whether a user with no rights of its own can run this interpreter, its standard library and the
    harness (not so for a Python installed under /root, mode 0700)."""
    def reachable(path: Path, mode: int) -> bool:
        parents_ok = all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)
        return parents_ok and path.stat().st_mode & mode == mode
    try:
        return (reachable(Path(sys.executable).resolve(), stat.S_IROTH | stat.S_IXOTH)
                and reachable(Path(os.__file__).resolve(), stat.S_IROTH) and reachable(HARNESS, stat.S_IROTH))
    except OSError:
        return False


def _sandbox_uid() -> int | None:
    """A fresh unprivileged uid per run when the gateway is root (concurrent runs never share a process
    count); None otherwise: an ordinary user cannot switch (and root ignores no limit it needs), or, as root,
    when no other user could run Python here — then the audit hook alone guards the run."""
    if os.geteuid() != 0:
        return None
    if not _others_can_run_python():
        _warn_root_without_a_user()
        return None
    return 200_000 + secrets.randbelow(1_000_000)


@functools.cache
def _warn_root_without_a_user() -> None:
    log.warning("python_tests runs code answers as root: no unprivileged user can run this Python (%s), so the "
                "sandbox is its audit hook and limits alone; run the gateway as a non-root user (the Docker image "
                "does) or install Python where others can read it", sys.executable)


def _signal_name(number: int) -> str:
    """SIGKILL for 9; real-time signals (a draft may raise signal 40 on itself) have no name in `signal.Signals`,
    whose ValueError made the verdict "the check could not judge the draft"."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _tail(path: Path, size: int = 4096) -> str:
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - size))
        return file.read().decode("utf-8", "replace")


def _read_report(path: Path, nonce: str) -> dict[str, Any] | None:
    """The harness's report (a literal of plain types), or None if it is not one with this run's nonce."""
    try:
        report = ast.literal_eval(path.read_text(encoding="utf-8", errors="replace")[:OUTPUT_LIMIT])
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(report, dict) or report.pop("nonce", None) != nonce:
        return None
    tests = report.get("tests")
    if not isinstance(tests, list) or not all(isinstance(t, dict) and isinstance(t.get("passed"), bool)
                                              for t in tests):
        return None
    return report


class PythonTestsVerifier:
    name = "python_tests"

    def __init__(self, tests: str, timeout_s: float = 5.0, memory_mb: int = 256, *,
                 concurrency: int | None = None) -> None:
        if not tests.strip():
            raise ValueError("python_tests needs `tests`")
        if not 0 < timeout_s <= 60 or not 32 <= memory_mb <= 4096:
            raise ValueError("python_tests: timeout_s in (0, 60], memory_mb in [32, 4096]")
        compile(tests, "tests.py", "exec")  # a syntax error in the config's tests is a config error
        if (problem := tests_problem(tests)) is not None:  # tests that pass every answer are one too
            raise ValueError(problem)
        self._tests, self._timeout_s, self._memory_mb = tests, timeout_s, memory_mb
        # Runs at a time (the others wait, their time limit not yet started): each may take memory_mb, and a burst
        # of cascades (the engine's batch and queue: 72 by default) would otherwise run them all at once.
        self._slots = asyncio.Semaphore(concurrency or os.cpu_count() or 1)

    async def verify(self, draft: Draft) -> Verdict:
        with tempfile.TemporaryDirectory(prefix="draftgate-sandbox-") as work:
            Path(work, "solution.py").write_text(extract_code(draft.text))
            Path(work, "tests_user.py").write_text(self._tests)
            result_name, nonce = f"result-{secrets.token_hex(16)}.txt", secrets.token_hex(16)
            async with self._slots:
                outcome = await self._run(work, result_name, nonce)
            if outcome is not None:
                return Verdict(self.name, False, outcome)
            result_file = Path(work, result_name)
            if not result_file.exists():
                return Verdict(self.name, False, "the sandbox ended without a result (crashed or was killed)")
            report = _read_report(result_file, nonce)
        if report is None:
            return Verdict(self.name, False, "the sandbox's result was not the harness's (forged or damaged)")
        return self._verdict(report)

    async def _run(self, work: str, result_name: str, nonce: str) -> str | None:
        """Runs the harness; returns why it was stopped, or None when it finished."""
        cpu_s = int(self._timeout_s) + 1
        uid = _sandbox_uid()
        if uid is not None:
            os.chown(work, uid, uid)
        # Output goes to files under the size limit, not pipes: a flood of prints must not fill the gateway.
        stdout, stderr = (os.open(Path(work, name), os.O_WRONLY | os.O_CREAT, 0o600) for name in (".stdout", ".stderr"))
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", str(HARNESS), cwd=work, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                stdin=asyncio.subprocess.PIPE, stdout=stdout, stderr=stderr,
                start_new_session=True, preexec_fn=lambda: _limits(self._memory_mb, cpu_s, uid))
        finally:
            os.close(stdout)
            os.close(stderr)
        try:
            await asyncio.wait_for(proc.communicate(f"{result_name} {nonce}\n".encode()), self._timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return f"stopped: the code ran longer than {self._timeout_s:g}s (infinite loop?)"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode and proc.returncode < 0:
            return f"stopped by {_signal_name(-proc.returncode)} (CPU or memory limit, or the code's own signal)"
        tail = _tail(Path(work, ".stderr")).strip().splitlines()[-1:]
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

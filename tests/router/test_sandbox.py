"""The Python-tests verifier's sandbox: correct code passes; escapes, bombs and loops are stopped."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from router.verifiers import Draft, build_verifier, sandbox

TESTS = "def test_double():\n    assert f(3) == 6, f'f(3) == 6, got {f(3)}'\n\ndef test_zero():\n    assert f(0) == 0\n"


async def run(code: str, tests: str = TESTS, **options: object) -> object:
    verifier = build_verifier("python_tests", {"tests": tests, "timeout_s": 3, "memory_mb": 256, **options})
    return await verifier.verify(Draft(text=f"Here you go:\n```python\n{code}\n```", request={}))


async def test_correct_code_passes() -> None:
    verdict = await run("def f(x):\n    return 2 * x")
    assert verdict.passed and verdict.reason == "2 test function(s) passed"


async def test_the_tests_may_import_the_answer_as_solution() -> None:
    """Tests written beside a solution.py import it; that was a ModuleNotFoundError, failing every answer."""
    tests = "from solution import f\nimport solution\n\ndef test_double():\n    assert f(3) == solution.f(3) == 6\n"
    assert (await run("def f(x):\n    return 2 * x", tests)).passed
    wrong = await run("def f(x):\n    return x + 2", tests)
    assert not wrong.passed and "test_double failed" in wrong.reason


async def test_wrong_code_fails_with_the_assertion_message() -> None:
    verdict = await run("def f(x):\n    return x + 2")
    assert not verdict.passed
    assert "test_double failed: AssertionError: f(3) == 6, got 5" in verdict.reason
    assert "test_zero failed" in verdict.reason


async def test_infinite_loop_is_stopped_in_bounded_time() -> None:
    started = time.monotonic()
    verdict = await run("def f(x):\n    while True:\n        pass")
    assert not verdict.passed and "stopped" in verdict.reason
    assert time.monotonic() - started < 10


async def test_memory_bomb_is_stopped() -> None:
    verdict = await run("blob = bytearray(2 * 1024 ** 3)\ndef f(x):\n    return 2 * x")
    assert not verdict.passed and ("MemoryError" in verdict.reason or "memory" in verdict.reason)


@pytest.mark.parametrize(("code", "needle"), [
    ("import os\nwhile True:\n    os.fork()", "os.fork"),
    ("import os\nos.system('echo hacked')", "os.system"),
    ("import subprocess\nsubprocess.run(['true'])", "subprocess"),
    ("import socket\nsocket.create_connection(('127.0.0.1', 22))", "socket"),
    ("import ctypes\nctypes.CDLL(None)", "ctypes"),
    ("data = open('/etc/passwd').read()", "/etc/passwd"),
    ("open('/tmp/draftgate-escape.txt', 'w').write('x')", "/tmp/draftgate-escape.txt"),
    ("import os\nos.remove('/tmp/anything')", "/tmp/anything"),
])
async def test_escapes_are_denied(code: str, needle: str) -> None:
    verdict = await run(code + "\ndef f(x):\n    return 2 * x")
    assert not verdict.passed
    assert "sandbox:" in verdict.reason and needle in verdict.reason


async def test_secrets_in_the_parent_environment_are_invisible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-parent-secret")
    verdict = await run("import os\ndef f(x):\n    return 2 * x\nassert 'OPENAI_API_KEY' not in os.environ, 'leak'")
    assert verdict.passed


async def test_the_result_file_cannot_be_forged() -> None:
    forge = ("import os\nfor name in os.listdir('.'):\n    if name.startswith('result-'):\n"
             "        open(name, 'w').write('{\"stage\": \"done\", \"error\": null, \"tests\": []}')\n"
             "def f(x):\n    return 0")
    verdict = await run(forge)
    assert not verdict.passed


async def test_concurrent_runs_all_return() -> None:
    codes = ["def f(x):\n    return 2 * x", "def f(x):\n    while True: pass", "def f(x):\n    return 1"] * 2
    verdicts = await asyncio.gather(*(run(c) for c in codes))
    assert [v.passed for v in verdicts] == [True, False, False] * 2


# Escapes a black-box review found (each passed, or ran a shell as the gateway's user, before the fix).
FORK_EXEC = ("import os, _posixsubprocess\nr, w = os.pipe()\n_posixsubprocess.fork_exec([b'/bin/sh', b'-c', b'true'], "
             "[b'/bin/sh'], True, (), None, None, -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, "
             "None, False)")
FRAME_FORGERY = """
try:
    raise ValueError
except ValueError as e:
    frame = e.__traceback__.tb_frame
    while frame is not None and 'gate' not in frame.f_locals:
        frame = frame.f_back
    frame.f_locals['gate']['open_result'] = True
    open(frame.f_locals['result_path'], 'w').write(repr({'stage': 'done', 'error': None, 'tests': [
        {'name': 'test_forged', 'passed': True, 'message': ''}]}))
    import os
    os._exit(0)
"""
SWAPPED_COMPILE = ("import builtins, sys\nfake = compile('def test_fake():\\n    pass', 't', 'exec')\n"
                   "builtins.compile = lambda *a, **k: fake\nsys.modules['__main__'].compile = builtins.compile")
TRACER = ("import sys\ndef skip(frame, event, arg):\n    return None\nsys.settrace(skip)")


@pytest.mark.parametrize(("code", "needle"), [
    (FORK_EXEC, "_posixsubprocess"),
    ("import os\nopen('x.txt', 'w').write('x')\nos.link('x.txt', '/tmp/draftgate-escape-link')", "escape-link"),
    ("import os\nopen('y.txt', 'w').write('y')\nos.rename('y.txt', '/tmp/draftgate-escape-rename')", "escape-rename"),
    ("import os\nos.symlink('solution.py', '/tmp/draftgate-escape-symlink')", "escape-symlink"),
    (FRAME_FORGERY, "tb_frame"),
    (TRACER, "sys.settrace"),
])
async def test_reviewed_escapes_are_denied(code: str, needle: str) -> None:
    verdict = await run(code + "\ndef f(x):\n    return 2 * x")
    assert not verdict.passed and "sandbox:" in verdict.reason and needle in verdict.reason, verdict.reason
    assert not any(Path("/tmp").glob("draftgate-escape-*"))


async def test_replaced_builtins_cannot_swap_the_tests() -> None:
    verdict = await run(SWAPPED_COMPILE)  # no f at all: the user's tests must still run, and fail
    assert not verdict.passed and "test_double failed" in verdict.reason


async def test_runs_beyond_the_concurrency_wait_for_a_slot() -> None:
    """Every draft's run started at once: a burst of cascades held memory_mb each, 72 by default at a time."""
    verifier = sandbox.PythonTestsVerifier(TESTS, timeout_s=3, concurrency=1)
    draft = Draft(text="import time\ntime.sleep(0.3)\ndef f(x):\n    return 2 * x\n", request={})
    start = time.perf_counter()
    verdicts = await asyncio.gather(*(verifier.verify(draft) for _ in range(3)))
    assert all(v.passed for v in verdicts) and time.perf_counter() - start >= 0.9


async def test_the_answer_may_write_a_few_files_but_not_fill_the_disk() -> None:
    """Each file stops at 10 MiB, but a loop of new files filled the disk at ~400 MB/s until the time limit."""
    few = "for i in range(3):\n    with open(f'out{i}.txt', 'w') as file:\n        file.write('x')\n"
    assert (await run(few + "def f(x):\n    return 2 * x")).passed
    flood = "i = 0\nwhile True:\n    with open(f'f{i}', 'w') as file:\n        file.write('x')\n    i += 1\n"
    verdict = await run(flood)
    assert not verdict.passed and "at most 16 files may be opened for writing or made" in verdict.reason
    dirs = await run("import os\nfor i in range(100_000):\n    os.mkdir(f'd{i}')\n")
    assert not dirs.passed and "at most 16 files" in dirs.reason


async def test_a_draft_killed_by_a_signal_without_a_name_is_judged_failed() -> None:
    """Signal 40 (real-time) is not in `signal.Signals`: its ValueError escaped the verifier, and the cascade
    recorded "the check could not judge the draft" (judged: false), which training then ignored."""
    verdict = await run("import signal\nsignal.raise_signal(40)\ndef f(x):\n    return 2 * x")
    assert not verdict.passed and verdict.judged and "stopped by signal 40" in verdict.reason


async def test_an_output_flood_is_stopped_at_the_file_size_limit() -> None:
    started = time.monotonic()
    verdict = await run("import sys\nfor _ in range(300):\n    sys.stdout.write('x' * 1024 * 1024)\n"
                        "def f(x):\n    return 2 * x", timeout_s=20)
    assert not verdict.passed and "File too large" in verdict.reason  # 10 MiB, in a file: none in the gateway
    assert time.monotonic() - started < 20


def test_as_root_the_child_runs_as_a_user_of_its_own_that_cannot_fork() -> None:
    """When the gateway is root (RLIMIT_NPROC binds no root process), the child switches to a fresh uid."""
    if os.geteuid() != 0:
        assert sandbox._sandbox_uid() is None  # an ordinary user keeps its own uid; NPROC 0 stops fork
        return
    uid = 200_123
    who = subprocess.run(["/usr/bin/id", "-u"], capture_output=True, text=True,
                         preexec_fn=lambda: sandbox._limits(64, 2, uid), timeout=10)
    assert who.stdout.strip() == str(uid)
    fork = subprocess.run(["/bin/sh", "-c", "/bin/true && echo forked"], capture_output=True, text=True,
                          preexec_fn=lambda: sandbox._limits(64, 2, uid), timeout=10)
    assert "forked" not in fork.stdout and "fork" in fork.stderr.lower()  # a second process is refused


# A second review tried to break the fixes above; each of these passed (or wrote outside) before.
DIR_FD = ("import os, sys\nfd = os.open(sys.prefix, os.O_RDONLY)\n"
          "os.write(os.open('draftgate-escape-dirfd', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), b'x')")
HOOK_TAMPERING = """
import builtins, os, sys
main = sys.modules['__main__']
for name in ('DENIED_EVENTS', 'DENIED_IMPORTS', 'PATH_EVENTS', 'WRITE_EVENTS'):
    setattr(main, name, frozenset())
builtins.any = lambda items: True
os.path.realpath = lambda path: os.getcwd()
open('/tmp/draftgate-escape-tampered', 'w').write('x')
"""
ATEXIT_FORGERY = """
import atexit, os
def forge():
    for name in os.listdir('.'):
        if name.startswith('result-'):
            text = open(name).read().replace("'passed': False", "'passed': True")
            open(name, 'w').write(text)
atexit.register(forge)
def f(x):
    return 0
"""
OWN_TEST_FIRST = """
def test_0():
    for name, value in list(globals().items()):
        if name.startswith('test') and name != 'test_0':
            value.__code__ = (lambda: None).__code__
def f(x):
    return 0
"""


@pytest.mark.parametrize(("code", "needle"), [
    (DIR_FD, "is not allowed"), (HOOK_TAMPERING, "is not allowed")])
async def test_bypasses_of_the_hook_are_denied(code: str, needle: str) -> None:
    verdict = await run(code + "\ndef f(x):\n    return 2 * x")
    assert not verdict.passed and needle in verdict.reason, verdict.reason
    assert not any(Path(sys.prefix).glob("draftgate-escape-*")) and not any(Path("/tmp").glob("draftgate-escape-*"))


@pytest.mark.parametrize("code", [ATEXIT_FORGERY, OWN_TEST_FIRST], ids=["atexit", "own-test-swaps-the-others"])
async def test_a_wrong_answer_cannot_forge_a_pass(code: str) -> None:
    verdict = await run(code)
    assert not verdict.passed and "test_double failed" in verdict.reason, verdict.reason
    assert "test_0" not in verdict.reason  # only the tests' own test functions run

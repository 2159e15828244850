"""The Python-tests verifier's sandbox: correct code passes; escapes, bombs and loops are stopped."""

from __future__ import annotations

import asyncio
import time

import pytest

from router.verifiers import Draft, build_verifier

TESTS = "def test_double():\n    assert f(3) == 6, f'f(3) == 6, got {f(3)}'\n\ndef test_zero():\n    assert f(0) == 0\n"


async def run(code: str, tests: str = TESTS, **options: object) -> object:
    verifier = build_verifier("python_tests", {"tests": tests, "timeout_s": 3, "memory_mb": 256, **options})
    return await verifier.verify(Draft(text=f"Here you go:\n```python\n{code}\n```", request={}))


async def test_correct_code_passes() -> None:
    verdict = await run("def f(x):\n    return 2 * x")
    assert verdict.passed and verdict.reason == "2 test function(s) passed"


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

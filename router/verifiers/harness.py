"""Runs inside the sandbox subprocess (as a script): guards the interpreter, then runs the user's tests.

Layers, all in place before any untrusted code runs: resource limits (set by the parent), an empty
environment, a temp working directory, and an audit hook (PEP 578) that denies process creation,
sockets, ctypes, introspection of this harness, and file access outside the temp directory (reads of
the Python installation excepted, so imports work). The result goes to a file whose name is read from
stdin before the hook is installed and which only the harness may open, after the tests ran.
"""

import json
import os
import sys
import traceback
from typing import Any

DENIED_EVENTS = {
    "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.kill", "os.killpg",
    "subprocess.Popen", "pty.spawn", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
    "socket.gethostbyname", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._getframe", "sys._current_frames",
    "os.chdir", "os.setuid", "os.setgid", "shutil.rmtree", "winreg.OpenKey",
}
DENIED_IMPORTS = {"ctypes", "_ctypes", "subprocess", "multiprocessing", "socket", "_socket", "pty", "resource"}
PATH_EVENTS = {"open", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod",
               "os.chown", "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.copyfile"}
WRITE_EVENTS = PATH_EVENTS - {"open", "os.listdir", "os.scandir"}


def main() -> None:
    result_name = sys.stdin.readline().strip()
    work = os.path.realpath(os.getcwd())
    readable = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                   os.path.dirname(os.__file__))})
    gate = {"open_result": False}
    result_path = os.path.join(work, result_name)

    def inside(path: str, roots: tuple[str, ...]) -> bool:
        real = os.path.realpath(path)
        return any(real == r or real.startswith(r + os.sep) for r in roots)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in DENIED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args and str(args[0]).split(".")[0] in DENIED_IMPORTS:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event in PATH_EVENTS and args:
            path = args[0]
            if isinstance(path, int):
                return
            path = os.fsdecode(path)
            if result_name in path and not gate["open_result"]:
                raise PermissionError("sandbox: the result file is the harness's")
            writing = event in WRITE_EVENTS or (event == "open" and len(args) > 1 and args[1] is not None
                                                and any(c in str(args[1]) for c in "wax+"))
            if event == "open" and len(args) > 2 and isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR):
                writing = True
            if not inside(path, (work,)) and (writing or not inside(path, readable)):
                raise PermissionError(f"sandbox: access to {path} is not allowed")

    with open(os.path.join(work, "solution.py")) as f:
        solution = f.read()
    with open(os.path.join(work, "tests_user.py")) as f:
        tests = f.read()
    sys.addaudithook(hook)
    report = run(solution, tests)
    gate["open_result"] = True
    with open(result_path, "w") as f:
        json.dump(report, f)


def _failure(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text[:500]


def run(solution: str, tests: str) -> dict[str, Any]:
    namespace = {"__name__": "solution"}
    try:
        exec(compile(solution, "solution.py", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - anything the answer does wrong is a finding
        return {"stage": "solution", "error": _failure(exc), "tests": []}
    try:
        exec(compile(tests, "tests.py", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001
        return {"stage": "tests", "error": _failure(exc), "tests": []}
    results = []
    for name, fn in list(namespace.items()):
        if name.startswith("test") and callable(fn):
            try:
                fn()
                results.append({"name": name, "passed": True, "message": ""})
            except BaseException as exc:  # noqa: BLE001
                results.append({"name": name, "passed": False, "message": _failure(exc)})
    return {"stage": "done", "error": None, "tests": results}


if __name__ == "__main__":
    main()

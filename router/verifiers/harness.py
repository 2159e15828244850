"""Runs inside the sandbox subprocess (as a script): guards the interpreter, then runs the user's tests.

Layers, all in place before any untrusted code runs: resource limits and, when the gateway runs as root,
an unprivileged user of its own (set by the parent), an empty environment, a temp working directory, and
an audit hook (PEP 578) that denies process creation, sockets, ctypes, tracing and frame
introspection (which would reach this harness's state), and file access outside the temp directory (reads
of the Python installation excepted, so imports work; every path of a rename, link or copy is checked).
The result goes to a file whose name, and a nonce, are read from stdin before the hook is installed; only
the harness may open it, after the tests ran, with references taken before any untrusted code ran (the
answer may replace `open` or json's encoder), and the parent checks the nonce.
"""

import os
import sys
from typing import Any

DENIED_EVENTS = {
    "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.kill", "os.killpg",
    "subprocess.Popen", "pty.spawn", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
    "socket.gethostbyname", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._getframe", "sys._current_frames",
    "os.chdir", "os.setuid", "os.setgid", "shutil.rmtree", "winreg.OpenKey",
    "sys.settrace", "sys.setprofile", "_thread.start_new_thread",  # a tracer can jump over a test's asserts
}
DENIED_IMPORTS = {"ctypes", "_ctypes", "subprocess", "_posixsubprocess", "multiprocessing", "_multiprocessing",
                  "socket", "_socket", "pty", "resource", "_posixshmem"}
FRAME_ATTRIBUTES = {"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back", "f_locals", "f_globals"}
PATH_EVENTS = {"open", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod",
               "os.chown", "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.copyfile"}
WRITE_EVENTS = PATH_EVENTS - {"open", "os.listdir", "os.scandir"}


def main() -> None:
    result_name, nonce = sys.stdin.readline().split()
    write, to_text = open, repr  # taken now: the answer may replace the builtins before the result is written
    for name in DENIED_IMPORTS:  # nothing preloaded may be reached through sys.modules either
        sys.modules.pop(name, None)
    work = os.path.realpath(os.getcwd())
    readable = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                   os.path.dirname(os.__file__))})
    gate = {"open_result": False}
    result_path = os.path.join(work, result_name)

    def inside(path: str, roots: tuple[str, ...]) -> bool:
        real = os.path.realpath(path)
        return any(real == r or real.startswith(r + os.sep) for r in roots)

    def check_path(event: str, path: Any, writing: bool) -> None:
        if isinstance(path, int) or path is None:
            return
        path = os.fsdecode(path)
        if result_name in path and not gate["open_result"]:
            raise PermissionError("sandbox: the result file is the harness's")
        if not inside(path, (work,)) and (writing or not inside(path, readable)):
            raise PermissionError(f"sandbox: access to {path} is not allowed")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in DENIED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "object.__getattr__" and len(args) > 1 and args[1] in FRAME_ATTRIBUTES:
            raise PermissionError(f"sandbox: reading {args[1]} is not allowed")
        if event == "import" and args and str(args[0]).split(".")[0] in DENIED_IMPORTS:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event in PATH_EVENTS and args:
            writing = event in WRITE_EVENTS or (event == "open" and len(args) > 1 and args[1] is not None
                                                and any(c in str(args[1]) for c in "wax+"))
            if event == "open" and len(args) > 2 and isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR):
                writing = True
            check_path(event, args[0], writing)
            if event in ("os.rename", "os.link", "os.symlink", "shutil.copyfile") and len(args) > 1:
                check_path(event, args[1], True)  # the destination, where a file would appear

    with open(os.path.join(work, "solution.py")) as f:
        solution = f.read()
    with open(os.path.join(work, "tests_user.py")) as f:
        tests = f.read()
    sys.addaudithook(hook)
    report = run(solution, tests)
    gate["open_result"] = True
    with write(result_path, "w") as f:  # a Python literal of plain types, read with ast.literal_eval
        f.write(to_text({"nonce": nonce, **report}))


def _failure(exc: BaseException) -> str:
    """`Type: message`, as traceback.format_exception_only writes it, without the traceback module: it walks
    the frames of chained exceptions, which the hook denies."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__qualname__}"
    try:
        message = str.__str__(str(exc))
    except BaseException:  # noqa: BLE001 - an answer's exception may refuse to print
        message = "<unprintable>"
    return str.__str__(f"{name}: {message}" if message else name)[:500]


def run(solution: str, tests: str, exec: Any = exec, compile: Any = compile,  # bound at import: the answer
        callable: Any = callable, list: Any = list) -> dict[str, Any]:  # may replace the builtins
    namespace = {"__name__": "solution"}
    try:
        exec(compile(solution, "solution.py", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - anything the answer does wrong is a finding
        return {"stage": "solution", "error": str.__str__(_failure(exc)), "tests": []}
    try:
        exec(compile(tests, "tests.py", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001
        return {"stage": "tests", "error": str.__str__(_failure(exc)), "tests": []}
    results = []
    for name, fn in list(namespace.items()):
        if name.startswith("test") and callable(fn):
            plain = str.__str__(name)  # an exact str: a subclass key could forge the result with its __repr__
            try:
                fn()
                results.append({"name": plain, "passed": True, "message": ""})
            except BaseException as exc:  # noqa: BLE001
                results.append({"name": plain, "passed": False, "message": str.__str__(_failure(exc))})
    return {"stage": "done", "error": None, "tests": results}


if __name__ == "__main__":
    main()

"""Runs inside the sandbox subprocess (as a script): guards the interpreter, then runs the user's tests.

Layers, all in place before any untrusted code runs: resource limits and, when the gateway runs as root,
an unprivileged user of its own (set by the parent), an empty environment, a temp working directory, and
an audit hook (PEP 578) that denies process creation, sockets, ctypes, tracing, frame introspection and
code swapping, and file access outside the temp directory (reads of the Python installation excepted, so
imports work; no directory outside it may be opened, so no `dir_fd` reaches past the check; every path
of a rename, link or copy is checked). The hook is built from references taken before the answer runs
(the answer shares this interpreter: it may replace builtins, `os.path` or this module's globals, and the
hook must not care). The result goes to a file opened before the answer runs and never reopenable, with a
nonce read from stdin that the parent checks, and the process ends with os._exit, so no atexit handler or
thread of the answer's runs after it. Audit hooks are not a complete sandbox (CPython says so): where the
gateway runs as root, the unprivileged uid is what keeps the rest of the machine out of reach.
"""

import ast
import os
import stat
import sys
from typing import Any

DENIED_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.kill", "os.killpg",
    "subprocess.Popen", "pty.spawn", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
    "socket.gethostbyname", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._getframe", "sys._current_frames",
    "os.chdir", "os.setuid", "os.setgid", "shutil.rmtree", "winreg.OpenKey",
    "sys.settrace", "sys.setprofile", "_thread.start_new_thread",  # a tracer can jump over a test's asserts
})
DENIED_IMPORTS = frozenset({"ctypes", "_ctypes", "subprocess", "_posixsubprocess", "multiprocessing",
                            "_multiprocessing", "socket", "_socket", "pty", "resource", "_posixshmem"})
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back", "f_locals", "f_globals"})
CODE_ATTRIBUTES = frozenset({"__code__", "__defaults__", "__kwdefaults__"})  # a test's body must stay its own
PATH_EVENTS = frozenset({"open", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.rmdir", "os.mkdir",
                         "os.chmod", "os.chown", "os.symlink", "os.link", "os.truncate", "os.utime",
                         "shutil.copyfile"})
WRITE_EVENTS = PATH_EVENTS - {"open", "os.listdir", "os.scandir"}
DESTINATION_EVENTS = frozenset({"os.rename", "os.link", "os.symlink", "shutil.copyfile"})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
MAX_LINKS = 40
MAX_WRITES = 16  # opens for writing, new directories and links: RLIMIT_FSIZE caps each file at 10 MiB, this caps
# how many (a loop of new files filled the disk at ~400 MB/s for the whole time limit)
FUNCTION = type(lambda: None)  # a test must be a plain function of the tests' own code


def build_hook(work: str, readable: tuple[str, ...], result_path: str, *, lstat: Any = os.lstat,
               readlink: Any = os.readlink, is_link: Any = stat.S_ISLNK, is_dir: Any = stat.S_ISDIR,
               isinstance: Any = isinstance, str: Any = str, bytes: Any = bytes, int: Any = int,
               len: Any = len, reversed: Any = reversed,
               PermissionError: Any = PermissionError, OSError: Any = OSError,
               denied_events: frozenset[str] = DENIED_EVENTS, denied_imports: frozenset[str] = DENIED_IMPORTS,
               frame_attributes: frozenset[str] = FRAME_ATTRIBUTES, code_attributes: frozenset[str] = CODE_ATTRIBUTES,
               path_events: frozenset[str] = PATH_EVENTS, write_events: frozenset[str] = WRITE_EVENTS,
               destination_events: frozenset[str] = DESTINATION_EVENTS, write_flags: int = WRITE_FLAGS,
               max_links: int = MAX_LINKS, max_writes: int = MAX_WRITES) -> Any:
    """The audit hook. Every name it uses is bound here, at import: nothing the answer replaces later (a
    builtin, os.path.realpath, this module's globals) changes what it allows. Text from the answer is read
    as exact `str` (str.__str__), so a subclass's methods cannot answer for it."""

    def resolve(path: str) -> tuple[str, bool]:
        """(the real absolute path, whether it is an existing directory): symlinks followed with lstat and
        readlink, not os.path.realpath, which is Python the answer could patch."""
        pending = [p for p in reversed((path if path.startswith("/") else work + "/" + path).split("/")) if p]
        done, hops, directory = "", 0, True
        while pending:
            part = pending.pop()
            if part == ".":
                continue
            if part == "..":
                done = done[:done.rfind("/")] if "/" in done else ""
                continue
            candidate = done + "/" + part
            try:
                mode = lstat(candidate).st_mode
            except OSError:  # does not exist (yet): the rest is taken literally
                done, directory = candidate, False
                continue
            if is_link(mode):
                hops += 1
                if hops > max_links:
                    raise PermissionError("sandbox: too many symbolic links")
                target = readlink(candidate)
                if target.startswith("/"):
                    done = ""
                pending += [p for p in reversed(target.split("/")) if p]
                continue
            done, directory = candidate, is_dir(mode)
        return done or "/", directory

    def inside(real: str, roots: tuple[str, ...]) -> bool:
        for root in roots:
            if real == root or real.startswith(root + "/"):
                return True
        return False

    def check_path(path: Any, writing: bool, opening: bool) -> None:
        if isinstance(path, int) or path is None:
            return
        if isinstance(path, bytes):
            path = bytes.decode(path, "utf-8", "surrogateescape")
        elif not isinstance(path, str):  # a PathLike the audit event did not convert: refuse to guess
            raise PermissionError("sandbox: an unexpected path object")
        real, directory = resolve(str.__str__(path))
        if real == result_path:
            raise PermissionError("sandbox: the result file is the harness's")
        if inside(real, (work,)):
            return
        if writing or not inside(real, readable) or (opening and directory):
            raise PermissionError(f"sandbox: access to {path} is not allowed")

    writes = [0]  # files opened for writing so far

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in denied_events:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "object.__getattr__" and len(args) > 1 and args[1] in frame_attributes:
            raise PermissionError(f"sandbox: reading {args[1]} is not allowed")
        if event == "object.__setattr__" and len(args) > 1 and args[1] in code_attributes:
            raise PermissionError(f"sandbox: replacing {args[1]} is not allowed")
        if event == "import" and args and isinstance(args[0], str) \
                and str.__str__(args[0]).split(".")[0] in denied_imports:
            raise PermissionError(f"sandbox: importing {str.__str__(args[0])} is not allowed")
        if event in path_events and args:
            writing = event in write_events
            if event == "open" and len(args) > 1 and isinstance(args[1], str):
                mode = str.__str__(args[1])
                writing = writing or "w" in mode or "a" in mode or "x" in mode or "+" in mode
            if event == "open" and len(args) > 2 and isinstance(args[2], int) and int.__and__(args[2], write_flags):
                writing = True
            check_path(args[0], writing, event == "open")
            if (event == "open" and writing) or event in ("os.mkdir", "os.symlink", "os.link"):
                writes[0] += 1
                if writes[0] > max_writes:
                    raise PermissionError(f"sandbox: at most {max_writes} files may be opened for writing or made")
            if event in destination_events and len(args) > 1:
                check_path(args[1], True, False)  # the destination, where a file would appear

    return hook


def main() -> None:
    result_name, nonce = sys.stdin.readline().split()
    to_text, write, encode, finish = repr, os.write, str.encode, os._exit  # taken before the answer runs
    for name in DENIED_IMPORTS:  # nothing preloaded may be reached through sys.modules either
        sys.modules.pop(name, None)
    work = os.path.realpath(os.getcwd())
    readable = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                   os.path.dirname(os.__file__))})
    result_path = os.path.join(work, result_name)
    result = os.open(result_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(os.path.join(work, "solution.py")) as f:
        solution = f.read()
    with open(os.path.join(work, "tests_user.py")) as f:
        tests = f.read()
    test_names = [n.name for n in ast.parse(tests).body
                  if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test")]
    sys.addaudithook(build_hook(work, readable, result_path))
    report = run(solution, tests, test_names)
    write(result, encode(to_text({"nonce": nonce, **report})))  # a literal of plain types, for ast.literal_eval
    finish(0)  # now: no atexit handler, finalizer or thread of the answer's runs after the result


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


def run(solution: str, tests: str, test_names: list[str], exec: Any = exec, compile: Any = compile,
        getattr: Any = getattr, type: Any = type, function: Any = FUNCTION) -> dict[str, Any]:
    """Runs the answer (as the module `solution`), then the tests' module in the same namespace, then each of the
    tests' own test functions in order: one the answer defined, or replaced after the tests defined it, is not
    theirs and fails."""
    answer = type(sys)("solution")  # tests written beside solution.py import it: `from solution import f`
    sys.modules["solution"] = answer
    namespace: dict[str, Any] = answer.__dict__
    try:
        exec(compile(solution, "solution.py", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - anything the answer does wrong is a finding
        return {"stage": "solution", "error": str.__str__(_failure(exc)), "tests": []}
    module = compile(tests, "tests.py", "exec")
    own = {c.co_name: c for c in module.co_consts if getattr(c, "co_filename", None) == "tests.py"}
    try:
        exec(module, namespace)
    except BaseException as exc:  # noqa: BLE001
        return {"stage": "tests", "error": str.__str__(_failure(exc)), "tests": []}
    functions: list[tuple[str, Any]] = [(name, namespace.get(name)) for name in test_names]  # all at once, first
    results = []
    for name, fn in functions:
        if type(fn) is not function or fn.__code__ is not own.get(name) or fn.__globals__ is not namespace:
            results.append({"name": name, "passed": False, "message": "the test function was replaced"})
            continue
        try:
            fn()
            results.append({"name": name, "passed": True, "message": ""})
        except BaseException as exc:  # noqa: BLE001
            results.append({"name": name, "passed": False, "message": str.__str__(_failure(exc))})
    return {"stage": "done", "error": None, "tests": results}


if __name__ == "__main__":
    main()

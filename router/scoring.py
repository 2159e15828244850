"""`draftgate router score --input PROMPTS.jsonl --output SCORES.jsonl`: the fixed scoring interface.

Input lines `{"id": ..., "prompt": ..., "draft"?: ...}`; output lines `{"id": ..., "p_hosted": float}`, one
per request line, same order. Blank lines are not requests and are skipped; ids are unique strings or
numbers, so scores join back by id. A malformed line is an error naming its line number, and nothing is
written. The output is written like `open(path, "w")` would (through symlinks, umask permissions, FIFOs and
devices in place) except that a regular file is replaced atomically, so a failure never leaves half of it.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import secrets
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.classifier import DifficultyClassifier
from router.errors import RoutingError

JSON_BLANKS = " \t\r\n"  # JSON's own whitespace: a line of only these is blank, anything else must parse


class ScoreInputError(RoutingError):
    """A line of the input file is not a valid scoring request."""

    def __init__(self, line_no: int, message: str) -> None:
        super().__init__(f"line {line_no}: {message}")
        self.line_no = line_no


class ScoreFileError(RoutingError):
    """The input cannot be read or the output cannot be written; names that file, in plain words."""

    def __init__(self, verb: str, path: Path, reason: str) -> None:
        super().__init__(f"cannot {verb} {path}: {reason}")
        self.path = path


def _why(exc: OSError) -> str:
    """The OS's reason without the file names it carries: a temp file's name means nothing to the user."""
    if exc.errno == errno.EISDIR:
        return "it is a directory"
    if exc.errno == errno.ENOTDIR:
        return "a part of its path is not a directory"
    reason = exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`{"id": 1, "id": 2}` would silently keep the last: which one the caller meant is not ours to guess."""
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"the key {repeated[0]!r} appears twice in one object")
    return dict(pairs)


def _request(line_no: int, raw: bytes) -> dict[str, Any] | None:
    """One line as a request, None for a blank line; anything malformed is a ScoreInputError."""
    try:
        line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError:
        raise ScoreInputError(line_no, "not UTF-8 text") from None
    if not line.strip(JSON_BLANKS):
        return None
    try:
        item = json.loads(line, parse_constant=_no_constants, object_pairs_hook=_no_repeated_keys)
    except json.JSONDecodeError as exc:
        raise ScoreInputError(line_no, f"not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise ScoreInputError(line_no, f"not valid JSON ({str(exc) or 'nested too deeply'})") from None
    if not isinstance(item, dict):  # `[...]`, `"text"`, `42`: a request is an object
        kind = ("an array" if isinstance(item, list) else "a string" if isinstance(item, str) else "null"
                if item is None else "a boolean" if isinstance(item, bool) else "a number")
        raise ScoreInputError(line_no, f"not a JSON object but {kind} (each line is {{\"id\": ..., \"prompt\": ...}})")
    if "id" not in item:
        raise ScoreInputError(line_no, "each line needs an \"id\"")
    ident = item["id"]
    if isinstance(ident, bool) or not isinstance(ident, str | int | float):
        raise ScoreInputError(line_no, "\"id\" must be a string or a number")
    if isinstance(ident, float) and not math.isfinite(ident):  # 1e400 parses as inf; the output could not say it
        raise ScoreInputError(line_no, "\"id\" must be a finite number")
    if not isinstance(item.get("prompt"), str):
        raise ScoreInputError(line_no, "\"prompt\" must be a string")
    if item.get("draft") is not None and not isinstance(item["draft"], str):
        raise ScoreInputError(line_no, "\"draft\" must be a string when given")
    for field in ("prompt", "draft"):
        try:
            (item.get(field) or "").encode("utf-8")
        except UnicodeEncodeError:
            raise ScoreInputError(line_no, f"\"{field}\" holds a lone surrogate (\\ud800-\\udfff), "
                                           "not text") from None
    return item


def read_requests(path: Path) -> list[dict[str, Any]]:
    """Every request in order. Duplicate ids are refused: the output is keyed by id (1 and 1.0 are one id)."""
    rows = []
    first_seen: dict[str | int | float, int] = {}
    try:
        with path.open("rb") as f:
            for line_no, raw in enumerate(f, 1):
                item = _request(line_no, raw)
                if item is None:
                    continue
                first = first_seen.setdefault(item["id"], line_no)
                if first != line_no:
                    raise ScoreInputError(line_no, f"duplicate id {json.dumps(item['id'])} (first on line {first})")
                rows.append(item)
    except OSError as exc:
        raise ScoreFileError("read", path, _why(exc)) from None
    return rows


@dataclass(frozen=True)
class OutputTarget:
    """Where the scores go: `path` as given (for messages), `real` with symlinks resolved (where a
    replacement is created), `direct` to write in place, `mode` the replaced file's permissions."""

    path: Path
    real: Path
    direct: bool
    mode: int | None = None


def _names_a_descriptor(path: Path) -> bool:
    """/dev/stdout, /dev/fd/N, /proc/PID/fd/N name an open file: replacing whatever it points at would miss
    that descriptor (a `>>` redirect, a deleted file), so such paths are written in place."""
    hop = Path(os.path.abspath(path))
    for _ in range(40):  # the kernel's own limit on a symlink chain
        parent = Path(os.path.realpath(hop.parent))
        if parent.parts[1:2] == ("proc",):
            return True
        if not hop.is_symlink():
            return False
        hop = Path(os.path.normpath(parent / os.readlink(hop)))
    return False


def output_target(input_path: Path, output_path: Path) -> OutputTarget:
    """Checks the output before any scoring, so a bad --output fails fast and the input is never overwritten.
    Missing directories are an error, not created: a typo should not grow a tree."""
    try:
        st = os.stat(output_path)
    except FileNotFoundError:
        real = Path(os.path.realpath(output_path))
        shown = real.parent if output_path.is_symlink() else output_path.parent
        try:
            if not stat.S_ISDIR(os.stat(real.parent).st_mode):
                raise ScoreFileError("write", output_path, f"{shown} is not a directory")
        except FileNotFoundError:
            raise ScoreFileError("write", output_path, f"directory {shown} does not exist") from None
        except OSError as exc:
            raise ScoreFileError("write", output_path, _why(exc)) from None
        return OutputTarget(output_path, real, direct=False)
    except OSError as exc:
        raise ScoreFileError("write", output_path, _why(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise ScoreFileError("write", output_path, "it is a directory")
    if not stat.S_ISREG(st.st_mode):  # a FIFO, a terminal, /dev/null: there is nothing to replace
        return OutputTarget(output_path, output_path, direct=True)
    try:
        same = os.path.samestat(st, os.stat(input_path))
    except OSError:
        same = False
    if same:
        raise ScoreFileError("write", output_path, "it is the input file")
    if _names_a_descriptor(output_path):
        return OutputTarget(output_path, output_path, direct=True)
    try:
        os.close(os.open(output_path, os.O_WRONLY | os.O_CLOEXEC))  # refused where open(path, "w") would be
    except OSError as exc:
        raise ScoreFileError("write", output_path, _why(exc)) from None
    return OutputTarget(output_path, Path(os.path.realpath(output_path)), direct=False,
                        mode=stat.S_IMODE(st.st_mode))


def _new_temp(beside: Path) -> tuple[Path, int]:
    """A fresh file next to `beside`, created with mode 0666 so the umask (and default ACLs) apply as in open()."""
    for _ in range(100):
        tmp = beside.with_name(f".{beside.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name")


def write_scores(target: OutputTarget, lines: Iterable[str]) -> None:
    """Streams into FIFOs and devices; a regular file is replaced atomically, leaving the old one on failure."""
    try:
        if target.direct:  # our own stdout is used as is, so a `>>` redirect appends instead of truncating
            in_place = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC  # no O_CREAT: a FIFO that vanished is an error
            fd = os.dup(1) if writes_to_stdout(target.path) else os.open(target.path, in_place)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.writelines(lines)
            return
        tmp, fd = _new_temp(target.real)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                if target.mode is not None:
                    os.fchmod(out.fileno(), target.mode)
                out.writelines(lines)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target.real)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ScoreFileError("write", target.path, _why(exc)) from None


def writes_to_stdout(path: Path) -> bool:
    """Whether `path` is this process's stdout (/dev/stdout, or the file stdout is redirected to): a caller
    then keeps its own messages off stdout so the JSONL stays clean."""
    try:
        return os.path.samestat(os.fstat(1), os.stat(path))
    except OSError:
        return False


def score_file(input_path: Path, output_path: Path, classifier: DifficultyClassifier | None = None) -> int:
    """Scores every request line into the output; returns the number of rows."""
    target = output_target(input_path, output_path)
    rows = read_requests(input_path)
    model = classifier or DifficultyClassifier.load()
    scores = model.score([r["prompt"] for r in rows], [r.get("draft") for r in rows]) if rows else []
    write_scores(target, (json.dumps({"id": row["id"], "p_hosted": round(score, 6)}) + "\n"
                          for row, score in zip(rows, scores, strict=True)))
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        count = score_file(args.input, args.output)
    except ScoreInputError as exc:
        print(f"error: {args.input}: {exc}", file=sys.stderr)
        return 2
    except (ScoreFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = sys.stderr if writes_to_stdout(args.output) else sys.stdout  # keep a piped JSONL clean
    print(f"scored {count} prompt(s) -> {args.output}", file=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

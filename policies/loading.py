"""Loading draftgate.yaml: every problem reported at once, each with file, line and field path."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from policies.crossref import cross_reference_problems
from policies.errors import ConfigError, ConfigProblem, is_union_tag
from policies.schema import GatewayConfig
from policies.source import ConfigShapeError, Located, render_path, resolve_env
from policies.suggest import close_key

DEFAULT_CONFIG = Path(__file__).resolve().parent / "default.yaml"
SECRET_NAME = re.compile(r"(key|secret|password|token)$|^database_url$", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.IGNORECASE)
QUOTED_URL_PASSWORD = re.compile(r"""(?<=['"])([a-z][a-z0-9+.-]*://[^/@\s:'"]*):[^/@\s'"]*@""", re.IGNORECASE)


def load(path: Path, env: Mapping[str, str]) -> GatewayConfig:
    """Loads and validates a config file; raises ConfigError listing every problem."""
    data = _read(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError([ConfigProblem(str(path), line, "", f"not UTF-8 text: byte 0x{data[exc.start]:02x} "
                                                               f"(save the file as UTF-8)")]) from None
    return load_text(text, env, filename=str(path))


MAX_FILE_BYTES = 16 * 1024 * 1024  # a config is a few KiB: /dev/zero or a log given by mistake must not fill memory
CHUNK_BYTES = 1024 * 1024


def _read(path: Path) -> bytes:
    """The file's bytes, opened without blocking: a FIFO that nothing writes to would wait forever, so it is
    refused at once; one that something writes to (`check-config <(envsubst < draftgate.yaml.in)`) is read."""
    def unreadable(why: str) -> ConfigError:
        return ConfigError([ConfigProblem(str(path), None, "", f"cannot read the file: {why}")])

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise unreadable(str(exc)) from None
    try:
        chunks: list[bytes] = []
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            try:
                chunks.append(os.read(fd, CHUNK_BYTES))
            except BlockingIOError:
                pass  # a writer that has written nothing yet: wait for it below
            if chunks == [b""]:  # end of file at once: no process has it open for writing
                raise unreadable("it is a FIFO (named pipe) that nothing writes to, so reading it would wait "
                                 "forever") from None
        os.set_blocking(fd, True)
        while chunk := os.read(fd, CHUNK_BYTES):
            chunks.append(chunk)
            if sum(map(len, chunks)) > MAX_FILE_BYTES:
                raise unreadable(f"it is larger than {MAX_FILE_BYTES // 2**20} MiB: not a draftgate config")
    except OSError as exc:  # a directory: Is a directory
        raise unreadable(str(exc)) from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def default_config() -> GatewayConfig:
    """The embedded defaults: local model on, no hosted models, the default policy."""
    return load(DEFAULT_CONFIG, {})


def load_text(text: str, env: Mapping[str, str], filename: str = "<string>") -> GatewayConfig:
    try:
        source = Located(text, filename)
    except (ConfigShapeError, RecursionError) as exc:  # RecursionError: nesting thousands of levels deep
        if isinstance(exc, ConfigShapeError):
            raise ConfigError([ConfigProblem(filename, exc.line, "", str(exc))]) from None
        raise ConfigError([ConfigProblem(filename, None, "", "values nested too deeply")]) from None
    except yaml.reader.ReaderError as exc:  # e.g. a control character: located by its position, not a mark
        at = text[:exc.position].count("\n") + 1
        raise ConfigError([ConfigProblem(filename, at, "", f"invalid YAML: character U+{exc.character:04X} "
                                                             "is not printable: YAML does not allow it")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        if reason.startswith("but ") and getattr(exc, "context", None):  # "but found another document": of what?
            reason = f"{exc.context}, {reason}"
        raise ConfigError([ConfigProblem(filename, line, "", f"invalid YAML: {reason}")]) from None
    if source.data is None:
        raise ConfigError([ConfigProblem(filename, None, "", "the file is empty")])
    if not isinstance(source.data, dict):
        raise ConfigError([ConfigProblem(filename, 1, "", "the top level must be a mapping of settings")])
    problems = [ConfigProblem(filename, line, render_path(path), f"duplicate key (first on line {source.lines[path]})")
                for path, line in source.duplicate_keys]
    problems += [ConfigProblem(filename, line, render_path(path), "holds a lone surrogate (\\ud800-\\udfff): "
                               "not text") for path, line in source.lone_surrogates]
    data = resolve_env(source.data, env, source, problems)
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_validation_problems(exc, source))
        raise ConfigError(problems) from None
    except RecursionError:  # e.g. a JSON Schema nested thousands of levels deep
        raise ConfigError([*problems, ConfigProblem(filename, None, "", "values nested too deeply")]) from None
    problems.extend(cross_reference_problems(config, source))
    if problems:
        raise ConfigError(problems)
    config.set_origin(source.origin)
    return config


def _schema_models() -> frozenset[str]:
    from policies import conditions, schema  # the models a union member can be

    return frozenset(n for module in (schema, conditions) for n, v in vars(module).items()
                     if isinstance(v, type) and issubclass(v, BaseModel))


def _without_union_tags(loc: tuple[Any, ...], models: frozenset[str],
                        source: Located) -> tuple[tuple[Any, ...], bool]:
    """pydantic names the member of a union each error is about (`model.str`, `model.list[str]`): that is its
    wording, not a key of the file, unless the file has that key (`metadata: {str: ...}`)."""
    kept: tuple[Any, ...] = ()
    for part in loc:
        if not is_union_tag(part, models) or kept + (part,) in source.lines:
            kept += (part,)
    return kept, len(kept) != len(loc)


def _validation_problems(exc: ValidationError, source: Located) -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    tags = _schema_models()
    merged: dict[tuple[Any, ...], int] = {}  # one problem per field for a value no member of a union took
    for error in exc.errors():
        loc, from_union = _without_union_tags(tuple(error["loc"]), tags, source)
        if any(loc[:len(path)] == path for path in source.unset_env):
            continue  # the variable is not set: that one problem is the cause, not the "" standing in for it
        message, got = error["msg"], ""
        if error["type"] == "extra_forbidden":
            close = close_key(GatewayConfig, tuple(error["loc"]))
            message = "unknown key" if close is None else f"unknown key (did you mean {close}?)"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif (isinstance(error.get("input"), (str, int, float, bool)) and error["type"] != "value_error"
              and not _may_be_secret(loc, error["input"], source)):
            got = f" (got {error['input']!r})"
            written = source.plain_scalars.get(tuple(loc))
            if written is not None and written.lower() != str(error["input"]).lower():  # `no` is False, `0123` 83
                got = f" (YAML reads {written} as {error['input']!r}: quote it if it is text)"
        message = _without_secrets(message.removeprefix("Value error, "), source)
        if from_union and loc in merged:
            first = out[merged[loc]]
            if message not in first.message:
                head = first.message.removesuffix(got)
                out[merged[loc]] = replace(first, message=f"{head}; or {message}{got}")
            continue
        if from_union:
            merged[loc] = len(out)
        out.append(source.problem(loc, message + got))
    return out


def _may_be_secret(loc: tuple[Any, ...], value: object, source: Located) -> bool:
    """Whether echoing `value` could print a secret: a field named like one (anywhere on its path: a union
    member's name may come last), a URL with a password, or anything that came from the environment."""
    if any(isinstance(part, str) and SECRET_NAME.search(part) for part in loc):
        return True
    text = str(value)
    return text in source.env_values or bool(URL_WITH_PASSWORD.match(text))


def _without_secrets(message: str, source: Located) -> str:
    """A validator's own message may quote the value it refused (`'...' is not an http(s) URL`): one from the
    environment is named as such, and a quoted URL's password is masked, as `_may_be_secret` keeps them out of `(got ...)`."""
    for value in source.env_values:
        message = message.replace(repr(value), "(a value from the environment)")
    return QUOTED_URL_PASSWORD.sub(r"\1:***@", message)

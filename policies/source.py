"""Reading YAML while remembering where each value came from (line numbers for error messages)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from policies.errors import ConfigProblem

Path = tuple[str | int, ...]
ENV_PREFIX = "os.environ/"
STR_TAG = "tag:yaml.org,2002:str"


class EnvText(str):
    """A value that came from an `os.environ/NAME` variable: text by nature, so a number field reads it as one
    (`timeout_s: os.environ/TIMEOUT`), where the same number quoted in the file is refused as a likely typo."""

    __slots__ = ()


def render_path(path: Path) -> str:
    """`models[1].price.input_per_mtok` from ("models", 1, "price", "input_per_mtok")."""
    out = ""
    for part in path:
        if isinstance(part, str):  # a lone surrogate in a key is shown escaped: it cannot be printed
            part = part.encode("utf-8", "backslashreplace").decode()
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _index_lines(node: yaml.Node, path: Path, found: Located) -> None:
    found.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = path + (str(key.value),)
            if child in found.lines:  # a key this mapping already had: YAML loaders keep the last one silently
                found.duplicate_keys.append((child, key.start_mark.line + 1))
                continue
            found.lines[child] = key.start_mark.line + 1
            if isinstance(key.value, str) and _has_surrogate(key.value):
                found.lone_surrogates.append((child, key.start_mark.line + 1))
            _index_lines(value, child, found)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, path + (i,), found)
    elif isinstance(node.value, str) and _has_surrogate(node.value):
        # "\ud800" is a valid YAML escape but not text: it could never match a request, be relayed or stored.
        found.lone_surrogates.append((path, node.start_mark.line + 1))
    elif node.style is None and node.tag != STR_TAG:  # `no`, `0123`, `1.5`: text to the writer, not to YAML
        found.plain_scalars[path] = node.value


MAX_VALUES = 100_000  # a config is a few hundred values; aliases must not expand it past this


class ConfigShapeError(ValueError):
    """YAML that is valid but cannot be a config: aliases that refer to themselves or expand too far."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line  # the anchored value that contains itself or grew too large; where nesting got too deep


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values the node becomes once every alias is expanded (memoised: aliases share nodes)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise ConfigShapeError("a YAML alias refers to a value that contains it", node.start_mark.line + 1)
    open_nodes.add(key)
    size = 1
    if isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, open_nodes) + _expanded_size(v, sizes, open_nodes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, sizes, open_nodes) for item in node.value)
    open_nodes.discard(key)
    sizes[key] = size
    if size > MAX_VALUES:
        raise ConfigShapeError(f"the file expands to more than {MAX_VALUES:,} values (YAML aliases)",
                               node.start_mark.line + 1)
    return size


def line_of(lines: Mapping[Path, int], path: Path) -> int | None:
    """The line of the deepest known prefix of `path`."""
    for end in range(len(path), -1, -1):
        line = lines.get(tuple(path[:end]))
        if line is not None:
            return line
    return None


@dataclass(frozen=True, eq=False)
class Origin:
    """Where a loaded config was read from, kept on it so warnings found after loading (lint) can name the
    line. Not part of the config's value: two configs with the same settings are equal wherever they came from."""

    filename: str
    lines: Mapping[Path, int]
    env_names: Mapping[Path, str] = field(default_factory=dict)  # `os.environ/NAME` values, by where they were

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Origin)

    def __hash__(self) -> int:
        return 0

    def problem(self, path: Path, message: str) -> ConfigProblem:
        return ConfigProblem(self.filename, line_of(self.lines, path), render_path(path), message)

    def shown(self, path: Path, value: str) -> str:
        """How a message names the value at `path`: as written, or by its variable when it came from the
        environment (`os.environ/NAME`: the file never holds the value, and it may be a secret)."""
        name = self.env_names.get(path)
        return repr(value) if name is None else f"(the value of {ENV_PREFIX}{name})"


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no type hints here
    """SafeLoader whose scalars that cannot be built (`2001-13-45` reads as a date, `0x_` as an int, `!!int x`)
    are YAML errors at their line, not a ValueError (or KeyError, IndexError ...) from inside PyYAML."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
            kind = str(node.tag).rsplit(":", 1)[-1]  # the value is not echoed: it may be a secret
            raise yaml.constructor.ConstructorError(
                None, None, f"this value reads as a YAML {kind} but is not a valid one (quote it if it is text)",
                node.start_mark) from None


class Located:
    """Parsed YAML data plus a path → line map."""

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        self.lines: dict[Path, int] = {}
        self.env_values: set[str] = set()  # what `os.environ/...` strings became: never echoed in a message
        self.env_names: dict[Path, str] = {}  # where each `os.environ/NAME` was, and its NAME: what messages show
        self.duplicate_keys: list[tuple[Path, int]] = []  # (path, line of the repeat)
        self.lone_surrogates: list[tuple[Path, int]] = []  # (path, line) of keys and values that are not text
        self.plain_scalars: dict[Path, str] = {}  # unquoted values YAML read as no string: how they were written
        self.unset_env: set[Path] = set()  # `os.environ/...` values that could not be resolved: already a problem
        loader = _Loader(text)  # one parse: the node tree gives the lines, then the data
        try:
            try:
                node = loader.get_single_node()
            except RecursionError:  # PyYAML's parser recurses once per level: `[[[[...` thousands deep
                raise ConfigShapeError("values nested too deeply", loader.line + 1) from None
            if node is not None:
                _expanded_size(node, {}, set())  # before constructing anything (alias bombs)
                _index_lines(node, (), self)
            self.data: Any = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()

    def line_of(self, path: Path) -> int | None:
        """The line of the deepest known prefix of `path`."""
        return line_of(self.lines, path)

    @property
    def origin(self) -> Origin:
        return Origin(self.filename, self.lines, self.env_names)

    def shown(self, path: Path, value: str) -> str:
        return self.origin.shown(path, value)

    def problem(self, path: Path, message: str, *, shown: Path | None = None) -> ConfigProblem:
        return ConfigProblem(self.filename, self.line_of(path), render_path(shown if shown is not None else path),
                             message)


def resolve_env(data: Any, env: Mapping[str, str], source: Located, problems: list[ConfigProblem],
                path: Path = ()) -> Any:
    """Replaces `os.environ/NAME` strings with the variable's value (noted in `source.env_values`: they are
    usually secrets); unset variables are problems."""
    if isinstance(data, dict):
        return {k: resolve_env(v, env, source, problems, path + (str(k),)) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_env(v, env, source, problems, path + (i,)) for i, v in enumerate(data)]
    if isinstance(data, str) and data.startswith(ENV_PREFIX):
        name = data[len(ENV_PREFIX):]
        if not name or name not in env:
            source.unset_env.add(path)  # its stand-in "" must not be reported again as a too-short value
            problems.append(source.problem(path, f"environment variable {name} is not set" if name else
                                           f"the environment variable's name is missing after {ENV_PREFIX}"))
            return ""
        source.env_values.add(env[name])
        source.env_names[path] = name
        return EnvText(env[name])
    return data

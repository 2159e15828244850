"""Reading YAML while remembering where each value came from (line numbers for error messages)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from policies.errors import ConfigProblem

Path = tuple[str | int, ...]
ENV_PREFIX = "os.environ/"


def render_path(path: Path) -> str:
    """`models[1].price.input_per_mtok` from ("models", 1, "price", "input_per_mtok")."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _index_lines(node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = path + (str(key.value),)
            lines[child] = key.start_mark.line + 1
            _index_lines(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, path + (i,), lines)


class Located:
    """Parsed YAML data plus a path → line map."""

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        self.lines: dict[Path, int] = {}
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _index_lines(node, (), self.lines)
        self.data: Any = yaml.safe_load(text)

    def line_of(self, path: Path) -> int | None:
        """The line of the deepest known prefix of `path`."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def problem(self, path: Path, message: str, *, shown: Path | None = None) -> ConfigProblem:
        return ConfigProblem(self.filename, self.line_of(path), render_path(shown if shown is not None else path),
                             message)


def resolve_env(data: Any, env: Mapping[str, str], source: Located, problems: list[ConfigProblem],
                path: Path = ()) -> Any:
    """Replaces `os.environ/NAME` strings with the variable's value; unset variables are problems."""
    if isinstance(data, dict):
        return {k: resolve_env(v, env, source, problems, path + (str(k),)) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_env(v, env, source, problems, path + (i,)) for i, v in enumerate(data)]
    if isinstance(data, str) and data.startswith(ENV_PREFIX):
        name = data[len(ENV_PREFIX):]
        if name not in env:
            problems.append(source.problem(path, f"environment variable {name} is not set"))
            return ""
        return env[name]
    return data

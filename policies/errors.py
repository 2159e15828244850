"""Errors raised while loading or checking a draftgate.yaml."""

from __future__ import annotations

from dataclasses import dataclass

PYDANTIC_TYPE_TAGS = frozenset({"str", "constrained-str", "int", "float", "bool", "list", "dict", "none",
                                "function-after", "function-before"})


def is_union_tag(part: object, models: frozenset[str] = frozenset()) -> bool:
    """Whether a part of a pydantic error location names the member of a union the error is about (`str`,
    `list[str]`, one of `models`' class names): pydantic's wording, not a field, key or index."""
    return isinstance(part, str) and (part in PYDANTIC_TYPE_TAGS or part in models or "[" in part)


class PolicyError(Exception):
    """Base class of every policies error."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem, located: file, line (when known) and the field path inside the file."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(PolicyError):
    """The file has problems; all of them are listed, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

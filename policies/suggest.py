"""'Did you mean …?' for an unknown key: the keys its mapping takes, found by walking the schema along the
error's location as pydantic did (fields, list items, dict values, union members named by their tag)."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel


def _members(annotation: Any) -> list[Any]:
    """The types a value of `annotation` may be: `X | None` and `Annotated[X, ...]` unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _tag_of(model: type[BaseModel]) -> str | None:
    """The discriminator value of an action model (`kind: Literal["cascade"]`), which pydantic puts in a location."""
    field = model.model_fields.get("kind")
    args = typing.get_args(field.annotation) if field is not None else ()
    return str(args[0]) if len(args) == 1 else None


def _step(annotation: Any, part: str | int) -> list[Any]:
    """The annotations reached from `annotation` through one location `part`."""
    out: list[Any] = []
    for member in _members(annotation):
        origin, args = typing.get_origin(member), typing.get_args(member)
        if isinstance(part, int) and origin is list:
            out.append(args[0])
        elif isinstance(part, str) and origin is dict:
            out.append(args[1])
        elif isinstance(member, type) and issubclass(member, BaseModel) and isinstance(part, str):
            if part in (member.__name__, _tag_of(member)):  # pydantic's name for the union member it tried
                out.append(member)
            for name, field in member.model_fields.items():
                if part in (name, field.alias):
                    out.append(field.annotation)
    return out


def close_key(model: type[BaseModel], loc: tuple[str | int, ...]) -> str | None:
    """The key the mapping at `loc[:-1]` takes that is closest to the unknown `loc[-1]`, if one is close."""
    reached: list[Any] = [model]
    for part in loc[:-1]:
        reached = [a for annotation in reached for a in _step(annotation, part)]
    known = {field.alias or name for annotation in reached for member in _members(annotation)
             if isinstance(member, type) and issubclass(member, BaseModel)
             for name, field in member.model_fields.items() if name != "kind"}
    close = difflib.get_close_matches(str(loc[-1]), sorted(known), n=1, cutoff=0.75)
    return close[0] if close else None

"""JSON Schema (draft 2020-12) as the verifiers run it: every pattern on the `regex` engine within a deadline,
and the `format`s a client's schema names checked.

Why: jsonschema matches `pattern`, `patternProperties` (also inside `additionalProperties` and
`unevaluatedProperties`) with `re`, where a client's pattern such as `^(\\w+\\s?)*$` on 40 characters of a
draft backtracks for hours, on the event loop; here they all share SCHEMA_REGEX_TIMEOUT_S per draft
(TimeoutError past it). And without a format checker jsonschema treats `format` as a note, so
`{"format": "date"}` passed "next Tuesday". FORMATS checks those that need no extra package: `date`,
`date-time`, `time` (RFC 3339), `email` and `idn-email` (an `@`, as jsonschema checks them), `ipv4`, `ipv6`,
`uuid` and `hostname`; others (`uri`, `duration`, `regex`, ...) are not checked.
"""

from __future__ import annotations

import datetime
import re
import time
from contextvars import ContextVar
from typing import Any

import jsonschema
import jsonschema.validators
import regex

SCHEMA_REGEX_TIMEOUT_S = 0.1  # for all of a schema's patterns on one draft, as a regex verifier's
SCHEMA_DEADLINE: ContextVar[float | None] = ContextVar("schema_deadline", default=None)


def _search(pattern: str, text: str) -> bool:
    """`re.search` as jsonschema runs it, on the `regex` engine, by the deadline of the draft being checked."""
    deadline = SCHEMA_DEADLINE.get()
    timeout = None if deadline is None else max(1e-6, deadline - time.monotonic())
    return regex.search(pattern, text, timeout=timeout) is not None


def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "string") and not _search(patrn, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "object"):
        for patrn, subschema in patterns.items():
            for key, value in instance.items():
                if _search(patrn, key):
                    yield from validator.descend(value, subschema, path=key, schema_path=patrn)


def _additional_properties(validator: Any, extra_schema: Any, instance: Any, schema: Any) -> Any:
    """jsonschema's, with the keys that no `properties` name matched against `patternProperties` here."""
    if not validator.is_type(instance, "object"):
        return
    patterns, named = schema.get("patternProperties", {}), schema.get("properties", {})
    extras = sorted((k for k in instance if k not in named and not any(_search(p, k) for p in patterns)), key=str)
    if validator.is_type(extra_schema, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], extra_schema, path=extra)
    elif not extra_schema and extras:
        listed = ", ".join(repr(extra) for extra in extras)
        if patterns:
            verb, regexes = "does" if len(extras) == 1 else "do", ", ".join(repr(p) for p in sorted(patterns))
            yield jsonschema.ValidationError(f"{listed} {verb} not match any of the regexes: {regexes}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield jsonschema.ValidationError(f"Additional properties are not allowed ({listed} {verb} unexpected)")


def _valid(validator: Any, instance: Any, subschema: Any) -> bool:
    return next(validator.descend(instance, subschema), None) is None


def _evaluated_keys(validator: Any, instance: dict[str, Any], schema: Any) -> set[str]:
    """jsonschema's `find_evaluated_property_keys_by_schema`, with `patternProperties` matched here."""
    if validator.is_type(schema, "boolean"):
        return set()
    keys: set[str] = set()
    for keyword in ("$ref", "$dynamicRef"):
        if (ref := schema.get(keyword)) is not None:
            resolved = validator._resolver.lookup(ref)
            keys |= _evaluated_keys(validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
                                    instance, resolved.contents)
    if validator.is_type(properties := schema.get("properties"), "object"):
        keys |= properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if (subschema := schema.get(keyword)) is not None:
            keys |= {key for key, value in instance.items() if _valid(validator, value, subschema)}
    patterns = schema.get("patternProperties", {})
    keys |= {key for key in instance if any(_search(p, key) for p in patterns)}
    for name, subschema in schema.get("dependentSchemas", {}).items():
        if name in instance:
            keys |= _evaluated_keys(validator, instance, subschema)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if _valid(validator, instance, subschema):
                keys |= _evaluated_keys(validator, instance, subschema)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys |= _evaluated_keys(validator, instance, schema["if"])
            keys |= _evaluated_keys(validator, instance, schema["then"]) if "then" in schema else set()
        elif "else" in schema:
            keys |= _evaluated_keys(validator, instance, schema["else"])
    return keys


def _unevaluated_properties(validator: Any, unevaluated: Any, instance: Any, schema: Any) -> Any:
    """jsonschema's, on the keys `_evaluated_keys` leaves."""
    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated_keys(validator, instance, schema)
    bad = [key for key in instance if key not in evaluated
           and not _valid_at(validator, instance[key], unevaluated, key)]
    if bad:
        verb = "was" if len(bad) == 1 else "were"
        if unevaluated is False:
            listed = ", ".join(repr(key) for key in sorted(bad, key=str))
            yield jsonschema.ValidationError(f"Unevaluated properties are not allowed ({listed} {verb} unexpected)")
        else:
            listed = ", ".join(repr(key) for key in bad)
            yield jsonschema.ValidationError("Unevaluated properties are not valid under the given schema "
                                             f"({listed} {verb} unevaluated and invalid)")


def _valid_at(validator: Any, value: Any, subschema: Any, key: str) -> bool:
    return next(validator.descend(value, subschema, path=key, schema_path=key), None) is None


BoundedValidator: Any = jsonschema.validators.extend(jsonschema.Draft202012Validator, {
    "pattern": _pattern, "patternProperties": _pattern_properties, "additionalProperties": _additional_properties,
    "unevaluatedProperties": _unevaluated_properties})

_TIME = r"(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))"
_DATE_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt]" + _TIME, re.ASCII)
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)


def _is_time(instance: object) -> bool:
    """RFC 3339 full-time: the offset is required; a leap second is allowed."""
    if not isinstance(instance, str):
        return True
    match = re.fullmatch(_TIME, instance, re.ASCII)
    if match is None:
        return False
    hour, minute, second, off_hour, off_minute = (int(g or 0) for g in match.groups())
    return hour < 24 and minute < 60 and second <= 60 and off_hour < 24 and off_minute < 60


def _is_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    match = _DATE_TIME.fullmatch(instance)
    if match is None:
        return False
    try:
        datetime.date.fromisoformat(match[1])
    except ValueError:
        return False
    return _is_time(instance[len(match[1]) + 1:])


def _is_hostname(instance: object) -> bool:
    """RFC 1123: dot-separated labels of letters, digits and inner hyphens, at most 253 characters."""
    if not isinstance(instance, str):
        return True
    name = instance.removesuffix(".")
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


FORMATS = jsonschema.FormatChecker(formats=())
_BUILT_IN = jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers
FORMATS.checkers = {name: _BUILT_IN[name] for name in ("date", "email", "idn-email", "ipv4", "ipv6", "uuid")}
FORMATS.checks("time")(_is_time)
FORMATS.checks("date-time")(_is_date_time)
FORMATS.checks("hostname")(_is_hostname)

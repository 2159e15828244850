"""Draft verifiers, composable per policy rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.errors import VerifierConfigError
from router.verifiers.base import Draft, JudgeFn, JudgeReply, Verdict, Verifier, run_verifiers
from router.verifiers.checks import (
    ConfidenceVerifier,
    JsonSchemaVerifier,
    JsonVerifier,
    JudgeVerifier,
    RegexVerifier,
    ResponseFormatVerifier,
)
from router.verifiers.sandbox import PythonTestsVerifier


def build_verifier(kind: str, options: Mapping[str, Any], *, judge: JudgeFn | None = None) -> Verifier:
    """A verifier from its YAML kind and options; VerifierConfigError names what is wrong."""
    factories: dict[str, Any] = {
        "json": JsonVerifier, "json_schema": JsonSchemaVerifier, "regex": RegexVerifier,
        "min_confidence": ConfidenceVerifier, "python_tests": PythonTestsVerifier,
        "judge": lambda **kw: JudgeVerifier(judge=judge, **kw),
    }
    if kind not in factories:
        raise VerifierConfigError(kind, f"unknown verifier kind {kind!r}")
    try:
        verifier: Verifier = factories[kind](**dict(options))
    except (TypeError, ValueError, SyntaxError) as exc:
        raise VerifierConfigError(kind, str(exc)) from exc
    except Exception as exc:  # e.g. jsonschema.SchemaError for a broken schema
        raise VerifierConfigError(kind, str(exc)) from exc
    return verifier


__all__ = ["Draft", "JsonSchemaVerifier", "JudgeFn", "JudgeReply", "ResponseFormatVerifier", "Verdict", "Verifier", "build_verifier", "run_verifiers"]

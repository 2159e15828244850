"""Each verifier's options, typed, so `check-config` reports a bad option with its file, line and field
path instead of the gateway failing at startup. The verifiers themselves (router/verifiers) check the
same values again when built: this layer may not import them, and they are also built from code."""

from __future__ import annotations

import re
from typing import Any, Literal

import jsonschema
import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Options = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def check_regex(value: str) -> str:
    """`value` if the `regex` engine (the one rules and verifiers run on, with timeouts) compiles it."""
    try:
        regex.compile(value)
    except (regex.error, OverflowError, RecursionError) as exc:  # a{4294967296}, thousands of nested groups
        raise ValueError(f"invalid regular expression: {str(exc) or 'nested too deeply'}") from None
    return value


class JsonOptions(BaseModel):
    model_config = Options


class JsonSchemaOptions(BaseModel):
    model_config = Options
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    from_request: bool = False

    @model_validator(mode="after")
    def _usable(self) -> JsonSchemaOptions:
        if self.schema_ is None and not self.from_request:
            raise ValueError("json_schema needs `schema` or `from_request: true`")
        if self.schema_ is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(self.schema_)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
            except (re.error, OverflowError, RecursionError) as exc:  # a "pattern" that cannot compile, deep nesting
                raise ValueError(f"not a valid JSON Schema: {str(exc) or 'nested too deeply'}") from None
        return self


class RegexOptions(BaseModel):
    model_config = Options
    pattern: str
    flags: str = Field(default="", pattern=r"^[ims]*$")
    mode: Literal["search", "fullmatch"] = "search"
    must_match: bool = True

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return check_regex(value)


class MinConfidenceOptions(BaseModel):
    model_config = Options
    max_entropy: float | None = Field(default=None, ge=0)
    max_mean_entropy: float | None = Field(default=None, ge=0)
    max_steps: int | None = Field(default=None, ge=1)
    allow_step_cap: bool = False
    min_tokens_per_pass: float | None = Field(default=None, ge=0)
    missing: Literal["pass", "fail"] = "fail"


class PythonTestsOptions(BaseModel):
    model_config = Options
    tests: str = Field(min_length=1)
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    memory_mb: int = Field(default=256, ge=32, le=4096)

    @field_validator("tests")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compile(value, "tests.py", "exec")
        except SyntaxError as exc:
            where = f" (line {exc.lineno})" if exc.lineno else ""
            raise ValueError(f"the tests do not compile: {exc.msg}{where}") from None
        except (ValueError, RecursionError, MemoryError) as exc:  # null bytes; expressions nested too deeply
            raise ValueError(f"the tests do not compile: {str(exc) or 'nested too deeply'}") from None
        return value


class JudgeOptions(BaseModel):
    model_config = Options
    model: str
    threshold: float = Field(default=0.7, ge=0, le=1)
    rubric: str = ""

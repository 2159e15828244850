"""A rule's `when`: the conditions on a request's structure and its caller's identity, strictly typed."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from policies.numbers import yaml_exponent
from policies.verifier_options import check_regex

# Conditions compare request facts with the file's values: `lt: "5"` or `has_tools: "yes"` is a typo, not a value
StrictTypes = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
Name = Annotated[str, Field(min_length=1)]  # a condition's name or keyword: "" names nothing (or is in every text)


class NumberCondition(BaseModel):
    """Numeric bounds; all given bounds must hold."""

    model_config = StrictTypes
    lt: float | None = None
    lte: float | None = None
    gt: float | None = None
    gte: float | None = None
    eq: float | None = None

    @field_validator("lt", "lte", "gt", "gte", "eq", mode="before")
    @classmethod
    def _exponent(cls, value: Any) -> Any:
        return yaml_exponent(value)

    @model_validator(mode="after")
    def _some_bound(self) -> NumberCondition:
        if all(v is None for v in (self.lt, self.lte, self.gt, self.gte, self.eq)):
            raise ValueError("give at least one of lt, lte, gt, gte, eq")
        low = max((v for v in (self.gt, self.gte, self.eq) if v is not None), default=None)
        high = min((v for v in (self.lt, self.lte, self.eq) if v is not None), default=None)
        strict = (self.gt is not None and self.gt == low) or (self.lt is not None and self.lt == high)
        if low is not None and high is not None and (low > high or (low == high and strict)):
            raise ValueError("these bounds can never all hold, so the rule would never match")
        return self

    def whole_number(self, least: int, what: str) -> NumberCondition:
        """Itself, if some whole number from `least` up meets every bound: token and message counts are whole
        and never below `least`, so `{lt: 0}` or `{gt: 2, lt: 3}` would make a rule that never matches."""
        low = least  # the smallest whole number meeting the lower bounds; then the upper ones decide
        for value, strict in ((self.gt, True), (self.gte, False), (self.eq, False)):
            if value is not None:
                low = max(low, math.floor(value) + 1 if strict else math.ceil(value))
        if ((self.lt is not None and low >= self.lt) or (self.lte is not None and low > self.lte)
                or (self.eq is not None and low != self.eq)):
            raise ValueError(f"{what} is a whole number from {least} up: no such number meets these bounds, so "
                             "the rule would never match")
        return self


class MetadataMatch(BaseModel):
    model_config = StrictTypes
    in_: list[str] | None = Field(default=None, alias="in", min_length=1)
    regex: str | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return _check_regex(value)


Role = Literal["system", "developer", "user", "assistant", "tool", "function"]  # what a chat request may send


class MessagesCondition(BaseModel):
    model_config = StrictTypes
    count: NumberCondition | None = None
    roles: list[Role] | None = Field(default=None, min_length=1)  # a typo (`sytem`) made the rule fail silently

    @field_validator("count")
    @classmethod
    def _a_count(cls, value: NumberCondition | None) -> NumberCondition | None:
        return None if value is None else value.whole_number(1, "a request's message count")


class ContentCondition(BaseModel):
    """Matches message text: every message's joined by newlines (`all`), or the last user message's only."""

    model_config = StrictTypes
    regex: str | None = None
    keywords: list[Name] | None = Field(default=None, min_length=1)  # [] or [""] matched every request
    scope: Literal["all", "last_user"] = "all"

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return _check_regex(value)


def _check_regex(value: str | None) -> str | None:
    return None if value is None else check_regex(value)


StrOrList = Name | Annotated[list[Name], Field(min_length=1)]  # `[]` or `""` names nothing: the rule never held


class When(BaseModel):
    """A rule's conditions; all must hold (an empty `when` matches everything)."""

    model_config = StrictTypes
    model: StrOrList | None = None
    team: StrOrList | None = None
    key: StrOrList | None = None
    metadata: dict[str, str | MetadataMatch] | None = None
    prompt_tokens: NumberCondition | None = None
    messages: MessagesCondition | None = None
    content: ContentCondition | None = None
    has_tools: bool | None = None
    has_response_format: bool | None = None
    p_hosted: NumberCondition | None = None

    @field_validator("prompt_tokens")
    @classmethod
    def _a_token_count(cls, value: NumberCondition | None) -> NumberCondition | None:
        return None if value is None else value.whole_number(0, "prompt_tokens")

    @field_validator("p_hosted")
    @classmethod
    def _probability(cls, value: NumberCondition | None) -> NumberCondition | None:
        bounds = () if value is None else (value.lt, value.lte, value.gt, value.gte, value.eq)
        if any(b is not None and not 0 <= b <= 1 for b in bounds):
            raise ValueError("p_hosted is a probability: its bounds lie between 0 and 1")
        if value is not None and ((value.lt is not None and value.lt <= 0) or (value.gt is not None and value.gt >= 1)):
            raise ValueError("p_hosted is a probability, never below 0 or above 1: these bounds hold for none, so "
                             "the rule would never match")
        return value

"""Numbers as draftgate.yaml writes them: YAML 1.2's `1e3` (text to PyYAML) is one; a quoted `"0.5"` is not."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from policies.source import EnvText

EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def yaml_exponent(value: Any, *, refuse_text: bool = False) -> Any:
    """`1e3` is a number in YAML 1.2 but a string to PyYAML (YAML 1.1 wants `1.0e+3`): read it as one. With
    `refuse_text`, a number written as text is refused, but a value from the environment (text by nature) is
    parsed."""
    if isinstance(value, str) and EXPONENT_NUMBER.fullmatch(value.strip()):
        number = float(value)
        return int(number) if number.is_integer() else number
    if isinstance(value, EnvText):
        return str(value)  # parsed by the field's type; its error never echoes the value (it may be a secret)
    if refuse_text and isinstance(value, str) and _reads_as_number(value):  # other text: pydantic's own words
        raise ValueError(f"a number, not the text {value!r} (YAML reads it as a number without the quotes)")
    if refuse_text and isinstance(value, bool):
        raise ValueError(f"a number, not {str(value).lower()}")
    return value


def _reads_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _a_number(value: Any) -> Any:
    return yaml_exponent(value, refuse_text=True)


# Every number in the file but a condition's (strictly typed there): YAML has real numbers, so `"0.5"` or `true`
# for one is a typo, refused with its line rather than coerced; `.inf` and `.nan` are no setting's value.
Number = Annotated[float, BeforeValidator(_a_number), Field(allow_inf_nan=False)]
Count = Annotated[int, BeforeValidator(_a_number)]

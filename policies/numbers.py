"""Numbers as draftgate.yaml writes them: YAML 1.2's `1e3`, which PyYAML reads as text."""

from __future__ import annotations

import re
from typing import Any

EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def yaml_exponent(value: Any, *, refuse_text: bool = False) -> Any:
    """`1e3` is a number in YAML 1.2 but a string to PyYAML (YAML 1.1 wants `1.0e+3`): read it as one."""
    if isinstance(value, str) and EXPONENT_NUMBER.fullmatch(value.strip()):
        number = float(value)
        return int(number) if number.is_integer() else number
    if refuse_text and isinstance(value, str):
        raise ValueError(f"a number, not the text {value!r}")
    return value

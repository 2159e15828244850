"""Checks of a draft answer, as features for the difficulty classifier.

Why: a wrong draft usually shows it. The arithmetic in its working does not hold, its final answer is
not a whole number where the question counts things, it never states a final answer or stops
mid-sentence, it leaves quantities from the question unused, or it brings in numbers that come from
nowhere. Each check is cheap and reads only the draft and its prompt.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from router.equations import equations
from router.features import numbers_in

CALC = re.compile(r"<<([^=<>]+)=([^<>]+)>>")  # GSM8K-style calculator annotations
FINAL = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")
HEDGES = ("i think", "probably", "not sure", "assume", "approximately", "maybe", "it seems", "cannot", "can't",
          "unclear", "however", "wait", "mistake", "actually", "not possible", "not enough information")
NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30,
                "forty": 40, "fifty": 50, "hundred": 100, "dozen": 12, "twice": 2, "double": 2, "triple": 3,
                "thousand": 1000, "quarter": 0.25, "half": 0.5}
# Constants a correct solution may bring in without the question stating them (hours, weeks, percent ...).
COMMON_CONSTANTS = {0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 12.0, 24.0, 30.0, 52.0, 60.0, 100.0,
                    365.0, 1000.0}

DRAFT_FEATURES = (
    "draft_present", "draft_log_chars", "draft_lines", "draft_has_final", "draft_calc_errors", "draft_eq_errors",
    "draft_any_error", "draft_checks", "draft_final_not_integer", "draft_final_negative", "draft_final_in_prompt",
    "draft_final_log_mag", "draft_final_vs_prompt_mag", "draft_final_mentions", "draft_final_is_last_result",
    "draft_prompt_numbers_used", "draft_hedges", "draft_truncated", "draft_variables", "draft_steps_per_number",
    "draft_answer_phrase", "draft_len_ratio", "draft_unexplained_numbers", "draft_unexplained_ratio",
    "signal_max_entropy", "signal_step_cap", "signal_tokens_per_pass",
)


def _safe_eval(expr: str) -> float | None:
    """Evaluates digits-and-operators only (no names can reach eval); None when it is not that."""
    text = expr.replace("\\", "").replace("×", "*").replace("÷", "/").replace("$", "").replace(",", "")
    text = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", text)
    text = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", text)
    if not re.fullmatch(r"[\d\s.+\-*/()]+", text) or len(text) > 120 or "**" in text:
        return None
    try:
        value = eval(text, {"__builtins__": {}}, {})
    except (SyntaxError, ZeroDivisionError, TypeError, ValueError, OverflowError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _holds(value: float, claimed: float) -> bool:
    """Equal up to the rounding a person would write (two decimals, or 1% of a small value)."""
    if abs(value) < 1:
        return abs(value - claimed) <= max(1e-6, 0.011 * abs(value))
    return abs(value - claimed) <= 1e-6 * abs(value) or round(value, 2) == round(claimed, 2)


def _clean(draft: str) -> str:
    return draft.replace("\\*", "*").replace("\\$", "$")


def arithmetic_errors(draft: str) -> tuple[int, int, int]:
    """(calculator annotations that do not hold, `a op b [op c] = d` that do not hold, checks made)."""
    text = _clean(draft)
    calc_bad = checks = 0
    for expr, stated in CALC.findall(text):
        value, claimed = _safe_eval(expr), numbers_in(stated)
        if value is not None and claimed:
            checks += 1
            calc_bad += not _holds(value, claimed[0])
    eq_bad = 0
    for expr, stated in equations(CALC.sub(" ", text)):  # annotations were checked above
        value, claimed = _safe_eval(expr), numbers_in(stated)
        if value is not None and claimed:
            checks += 1
            eq_bad += not _holds(value, claimed[0])
    return calc_bad, eq_bad, checks


def _results(text: str) -> list[float]:
    """The numbers the working computed (right-hand sides of annotations and equations), in order."""
    out = [v for _, stated in CALC.findall(text) for v in numbers_in(stated)[:1]]
    return out + [v for _, stated in equations(CALC.sub(" ", text)) for v in numbers_in(stated)[:1]]


def _given(prompt: str) -> set[float]:
    words = {v for w, v in NUMBER_WORDS.items() if re.search(rf"\b{w}\b", prompt.lower())}
    return set(numbers_in(prompt)) | {float(v) for v in words}


def draft_features(draft: str | None, signals: Mapping[str, Any] | None = None, prompt: str = "") -> list[float]:
    """A fixed-length vector (DRAFT_FEATURES order); zeros when there is no draft."""
    sig = signals or {}
    signal_part = [float(sig.get("max_entropy", 0.0)), float(bool(sig.get("step_cap_hit", False))),
                   float(sig.get("tokens_per_pass", 0.0))]
    if not draft:
        return [0.0] * (len(DRAFT_FEATURES) - 3) + signal_part
    text = _clean(draft)
    calc_bad, eq_bad, checks = arithmetic_errors(text)
    final = FINAL.search(text)
    numbers, given = numbers_in(text), _given(prompt)
    final_value = numbers_in(final.group(1))[0] if final and numbers_in(final.group(1)) else (
        numbers[-1] if numbers else None)
    results = _results(text)
    working = numbers_in(CALC.sub(" ", text))
    unexplained = {x for x in working if x not in given and x not in results and x not in COMMON_CONSTANTS
                   and not any(abs(x - g * 100) < 1e-9 or abs(x - g / 100) < 1e-9 for g in given)}
    lines = [line for line in text.split("\n") if line.strip()]
    lowered = text.lower()
    has_final = final_value is not None
    value = final_value if final_value is not None else 0.0
    prompt_max = max((abs(g) for g in given), default=0.0)
    return [
        1.0, math.log1p(len(text)), math.log1p(len(lines)), float(final is not None), float(calc_bad),
        float(eq_bad), float(calc_bad + eq_bad > 0), math.log1p(checks),
        float(has_final and abs(value - round(value)) > 1e-9), float(has_final and value < 0),
        float(has_final and value in given), math.log1p(abs(value)),
        math.log1p(abs(value)) - math.log1p(prompt_max) if has_final else 0.0,
        math.log1p(sum(abs(x - value) < 1e-9 for x in numbers)) if has_final else 0.0,
        float(has_final and bool(results) and abs(value - results[-1]) < 1e-6),
        sum(any(abs(g - x) < 1e-9 for x in numbers) for g in given) / max(1, len(given)),
        math.log1p(sum(h in lowered for h in HEDGES)),
        float(text.strip()[-1:] not in ".!0123456789)" and final is None),
        float(bool(re.search(r"\b[xyn]\s*=|\blet [a-z] ", lowered))),
        checks / max(1, len(given)),
        float(bool(re.search(r"(answer is|answer:|therefore|thus|so,? the|in total|total of)", lowered))),
        math.log1p(len(text)) - math.log1p(len(prompt)),
        math.log1p(len(unexplained)), len(unexplained) / max(1, len(set(working))),
    ] + signal_part

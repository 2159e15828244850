"""Cheap, deterministic features of a prompt and of a draft answer, for the difficulty classifier.

Prompt features describe what makes a question hard regardless of its subject (length, quantities,
negations, multiple-choice structure). Draft features check the answer itself: is there a final
answer, does the arithmetic in the working hold, does it hedge.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
CHOICE = re.compile(r"^([A-D])\.\s*(.*)$", re.MULTILINE)
CALC = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
EQUATION = re.compile(r"(-?\d+(?:\.\d+)?)\s*([+\-*/x×])\s*(-?\d+(?:\.\d+)?)\s*=\s*\$?(-?\d+(?:\.\d+)?)")
HEDGES = ("i think", "probably", "not sure", "assume", "approximately", "maybe", "it seems", "cannot determine")
NEGATIONS = re.compile(r"\b(NOT|EXCEPT|LEAST|FALSE|never|incorrect)\b")

PROMPT_FEATURES = ("log_chars", "log_words", "numbers", "log_max_number", "decimals", "percent", "money",
                   "fractions", "sentences", "questions", "negation", "statements", "is_mcq", "choice_mean_len",
                   "choice_len_spread", "numeric_choices", "all_of_above", "code_markers", "math_markers",
                   "long_words", "capitals")
DRAFT_FEATURES = ("draft_present", "draft_log_chars", "draft_has_final", "draft_calc_errors", "draft_eq_errors",
                  "draft_checks", "draft_hedges", "draft_lines", "draft_numbers_ratio", "draft_final_in_text",
                  "signal_max_entropy", "signal_step_cap", "signal_tokens_per_pass")


def _numbers(text: str) -> list[float]:
    out = []
    for raw in NUMBER.findall(text):
        try:
            out.append(float(raw.replace(",", "")))
        except ValueError:
            continue
    return out


def prompt_features(prompt: str) -> list[float]:
    """A fixed-length vector (PROMPT_FEATURES order)."""
    words = prompt.split()
    numbers = _numbers(prompt)
    choices = [c[1] for c in CHOICE.findall(prompt)]
    lengths = [len(c) for c in choices] or [0]
    mean_len = sum(lengths) / len(lengths)
    spread = (max(lengths) - min(lengths)) / (mean_len + 1)
    return [
        math.log1p(len(prompt)), math.log1p(len(words)), float(len(numbers)),
        math.log1p(max((abs(n) for n in numbers), default=0.0)), float(prompt.count(".") - prompt.count(". ")),
        float("%" in prompt or "percent" in prompt.lower()), float("$" in prompt),
        float(len(re.findall(r"\b\d+/\d+\b", prompt))), float(prompt.count(". ") + 1), float(prompt.count("?")),
        float(len(NEGATIONS.findall(prompt))), float("Statement 1" in prompt), float(len(choices) >= 4),
        math.log1p(mean_len), spread,
        float(sum(bool(NUMBER.fullmatch(c.strip().rstrip("%"))) for c in choices)),
        float("all of the above" in prompt.lower() or "none of the above" in prompt.lower()),
        float(any(m in prompt for m in ("def ", "()", "{", "};", "print(", "return "))),
        float(len(re.findall(r"[=^√∫∑π]|\bsqrt\b|\blog\b", prompt))),
        float(sum(len(w) > 12 for w in words)) / (len(words) + 1),
        float(sum(w[:1].isupper() for w in words)) / (len(words) + 1),
    ]


def _safe_eval(expr: str) -> float | None:
    expr = expr.replace("x", "*").replace("×", "*").replace(",", "").strip()
    if not re.fullmatch(r"[\d\s.+\-*/()]+", expr) or len(expr) > 80:
        return None
    try:
        value = eval(expr, {"__builtins__": {}}, {})  # noqa: S307 - digits and operators only, checked above
    except (SyntaxError, ZeroDivisionError, TypeError, ValueError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def arithmetic_errors(draft: str) -> tuple[int, int, int]:
    """(calculator annotations that do not hold, `a op b = c` that do not hold, checks made)."""
    calc_bad = checks = 0
    for expr, stated in CALC.findall(draft):
        value, claimed = _safe_eval(expr), _numbers(stated)
        if value is not None and claimed:
            checks += 1
            calc_bad += abs(value - claimed[0]) > 1e-6 * max(1.0, abs(value))
    eq_bad = 0
    for a, op, b, c in EQUATION.findall(CALC.sub(" ", draft)):  # annotations were checked above
        value = _safe_eval(f"{a}{'*' if op in 'x×' else op}{b}")
        if value is not None:
            checks += 1
            eq_bad += abs(value - float(c)) > 1e-6 * max(1.0, abs(value))
    return calc_bad, eq_bad, checks


def draft_features(draft: str | None, signals: Mapping[str, Any] | None = None) -> list[float]:
    """A fixed-length vector (DRAFT_FEATURES order); zeros when there is no draft."""
    sig = signals or {}
    signal_part = [float(sig.get("max_entropy", 0.0)), float(bool(sig.get("step_cap_hit", False))),
                   float(sig.get("tokens_per_pass", 0.0))]
    if not draft:
        return [0.0] * (len(DRAFT_FEATURES) - 3) + signal_part
    calc_bad, eq_bad, checks = arithmetic_errors(draft)
    final = re.search(r"####\s*(-?[\d,.]+)", draft)
    numbers = _numbers(draft)
    last = numbers[-1] if numbers else None
    final_value = _numbers(final.group(1))[0] if final and _numbers(final.group(1)) else last
    mentions = sum(1 for n in numbers if final_value is not None and abs(n - final_value) < 1e-9)
    lowered = draft.lower()
    return [1.0, math.log1p(len(draft)), float(final is not None), float(calc_bad), float(eq_bad), float(checks),
            float(sum(h in lowered for h in HEDGES)), float(draft.count("\n") + 1),
            len(numbers) / (len(draft.split()) + 1), float(mentions > 1)] + signal_part

"""Cheap, deterministic, subject-agnostic features of a prompt, for the difficulty classifier.

Why these: the classifier is judged on subjects it never saw, so a feature must describe the *shape*
of a question (how long, how many quantities, whether it asks to judge several claims at once, how
alike the answer options are), not its topic. Features that name a topic (and MiniLM embeddings fed
in whole) learn which training subjects were hard, which does not transfer to new subjects.
"""

from __future__ import annotations

import itertools
import math
import re
from difflib import SequenceMatcher

NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
CHOICE = re.compile(r"^([A-J])\.\s*(.*)$", re.MULTILINE)
WORD = re.compile(r"[A-Za-z]+")
CONTENT_WORD = re.compile(r"[a-z]{4,}")
NEGATION_WORDS = re.compile(r"\b(NOT|EXCEPT|LEAST|FALSE|never|incorrect|not)\b")
UNITS = re.compile(r"\b(hours?|minutes?|days?|weeks?|years?|miles?|feet|inch(?:es)?|pounds?|kg|meters?|cm|"
                   r"dollars?|cents?)\b")
STEP_WORDS = re.compile(r"\b(each|every|per|twice|half|times|remaining|left|more than|less than|fewer|total|"
                        r"average|after|then)\b")

PROMPT_FEATURES = (
    "log_chars", "log_stem_chars", "log_stem_words", "stem_sentences", "stem_numbers", "stem_log_max_number",
    "stem_decimals", "percent", "money", "fractions", "question_mark", "fill_in", "negation", "negation_words",
    "enumerated_claims", "roman_numerals", "is_mcq", "choice_log_mean_len", "choice_log_max_len", "choice_len_cv",
    "choice_stem_ratio", "choice_word_overlap", "choice_similarity", "choice_vocab_ratio", "numeric_choices",
    "pure_numeric_choices", "of_the_above", "longest_choice_unique", "stem_choice_overlap", "which_of_following",
    "true_false", "math_markers", "logic_symbols", "code_markers", "long_words", "mean_word_len", "capitals",
    "quotes", "units", "step_words",
)


def numbers_in(text: str) -> list[float]:
    """Every number written with digits (thousands separators allowed), in order."""
    out = []
    for raw in NUMBER.findall(text):
        try:
            out.append(float(raw.replace(",", "")))
        except ValueError:
            continue
    return out


MAX_CHOICES = 20  # the options compared pairwise: a question has at most 10 (A-J), the training data 5


def split_choices(prompt: str) -> tuple[str, list[str]]:
    """(question stem, its first MAX_CHOICES answer options) of a multiple-choice prompt; (prompt, []) otherwise.
    Options are compared pairwise, so a prompt of thousands of `A. ...` lines would take minutes."""
    first = CHOICE.search(prompt)
    if first is None:
        return prompt, []
    return prompt[:first.start()], [m[2].strip() for m in itertools.islice(CHOICE.finditer(prompt), MAX_CHOICES)]


def _pairs(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _choice_features(stem: str, choices: list[str]) -> list[float]:
    """Option structure: lengths, how alike they are (near-identical options are traps), numbers."""
    lengths = [len(c) for c in choices] or [0]
    mean_len = sum(lengths) / len(lengths)
    tokens = [set(WORD.findall(c.lower())) for c in choices]
    index_pairs = [(i, j) for i in range(len(choices)) for j in range(i + 1, len(choices))]
    overlap = _pairs([len(tokens[i] & tokens[j]) / max(1, len(tokens[i] | tokens[j])) for i, j in index_pairs])
    similarity = _pairs([SequenceMatcher(None, choices[i].lower(), choices[j].lower()).ratio()
                         for i, j in index_pairs])
    vocab = set().union(*tokens) if tokens else set()
    total_tokens = sum(len(WORD.findall(c)) for c in choices)
    stem_words = set(CONTENT_WORD.findall(stem.lower()))
    shared = [len(stem_words & set(CONTENT_WORD.findall(c.lower()))) / max(1, len(set(CONTENT_WORD.findall(
        c.lower())))) for c in choices]
    ranked = sorted(lengths)
    n = max(1, len(choices))
    return [
        float(len(choices) >= 2), math.log1p(mean_len), math.log1p(max(lengths)),
        (max(lengths) - min(lengths)) / (mean_len + 1), math.log1p(sum(lengths)) - math.log1p(len(stem)),
        overlap, similarity, len(vocab) / max(1, total_tokens) if choices else 0.0,
        sum(bool(NUMBER.search(c)) for c in choices) / n,
        sum(bool(re.fullmatch(r"[-$\d.,%/ ]+\s*\w{0,8}", c)) for c in choices) / n,
        float(any(re.search(r"\b(all|none|both) of (the above|these)\b", c.lower()) for c in choices)),
        float(len(ranked) >= 2 and ranked[-1] > 1.5 * ranked[-2]),
        (max(shared) - _pairs(shared)) if shared else 0.0,
    ]


def prompt_features(prompt: str) -> list[float]:
    """A fixed-length vector (PROMPT_FEATURES order)."""
    stem, choices = split_choices(prompt)
    words = WORD.findall(stem)
    stem_numbers = numbers_in(stem)
    lowered = stem.lower()
    n_words = len(words) + 1
    return [
        math.log1p(len(prompt)), math.log1p(len(stem)), math.log1p(len(words)),
        math.log1p(len(re.findall(r"[.!?](\s|$)", stem))), math.log1p(len(stem_numbers)),
        math.log1p(max((abs(v) for v in stem_numbers), default=0.0)), float(bool(re.search(r"\d\.\d", stem))),
        float("%" in prompt or "percent" in prompt.lower()), float("$" in prompt),
        float(bool(re.search(r"\b\d+/\d+\b", prompt))), float(stem.rstrip().endswith("?")),
        float("_" in stem or stem.rstrip().endswith((":", " is", " of", " the", " a", " an", " to"))),
        float(bool(re.search(r"\b(NOT|EXCEPT|LEAST)\b", stem))), math.log1p(len(NEGATION_WORDS.findall(stem))),
        float(bool(re.search(r"(Statement|Scenario) \d|\|", stem))),
        float(bool(re.search(r"\b(I{1,3}|IV)\b[.)]", stem))
              or any(re.search(r"\bI{1,3}\b.*\b(and|only)\b", c) for c in choices)),
        *_choice_features(stem, choices),
        float("which of the following" in lowered), float(bool(re.search(r"\b(true|false|correct)\b", lowered))),
        math.log1p(len(re.findall(r"[=^√∫∑π<>≤≥±]|\bsqrt\b|\blog\b", prompt))),
        float(bool(re.search(r"[⊃≡∨·~]", prompt))),
        float(any(m in prompt for m in ("def ", "()", "{", "};", "print(", "return ", "int "))),
        sum(len(w) > 12 for w in words) / n_words, sum(map(len, words)) / n_words,
        sum(w[:1].isupper() for w in words) / n_words, float(stem.count('"') >= 2 or "“" in stem),
        math.log1p(len(UNITS.findall(stem)) + stem.count("%")), math.log1p(len(STEP_WORDS.findall(lowered))),
    ]

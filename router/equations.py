"""`a op b [op c ...] = d` in a draft's working, found in linear time.

Why: `EQUATION.findall` alone is quadratic on a long operator chain that never reaches `= number`
(`1+1+…+1`, thousands of terms): the regex engine walks the whole chain from every operand before
giving up, ~10 s for one 8 KB draft. `equations` returns exactly what `EQUATION.findall` returns
(the classifier's weights were fitted on those features), but first finds, in one right-to-left
pass over a small automaton of the same pattern, the positions where a match can start, and runs
the regex only there.
"""

from __future__ import annotations

import re
from functools import cache

_OPERAND = r"\(?\s*\$?-?\d[\d,]*(?:\.\d+)?%?\s*\)?"
_OPERATORS = "-+*/x×÷"
EQUATION = re.compile(rf"((?:{_OPERAND}\s*[-+*/x×÷]\s*)+{_OPERAND})\s*=\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)")
# Every character EQUATION can match: a match never leaves a run of these, so each run is searched alone.
_RUN = re.compile(r"[\d\s,.%()$=" + re.escape(_OPERATORS) + "]+")


def _operand(first: int, exit_state: int, edges: list[tuple[int, str, int]]) -> None:
    """States first..first+10 of `_OPERAND` (11 states), leaving to exit_state; '' marks an ε edge."""
    p = first
    edges += [(p, "(", p + 1), (p, "", p + 1), (p + 1, "s", p + 1), (p + 1, "", p + 2),
              (p + 2, "$", p + 3), (p + 2, "", p + 3), (p + 3, "-", p + 4), (p + 3, "", p + 4),
              (p + 4, "d", p + 5), (p + 5, "d", p + 5), (p + 5, ",", p + 5), (p + 5, ".", p + 6),
              (p + 5, "", p + 8), (p + 6, "d", p + 7), (p + 7, "d", p + 7), (p + 7, "", p + 8),
              (p + 8, "%", p + 9), (p + 8, "", p + 9), (p + 9, "s", p + 9), (p + 9, "", p + 10),
              (p + 10, ")", exit_state), (p + 10, "", exit_state)]


def _automaton() -> tuple[dict[str, list[tuple[int, int]]], list[int], int, int]:
    """EQUATION as an ε-NFA: operand A, `\\s*op\\s*`, operand B, (`\\s*op\\s*` B)*, `\\s*=\\s*$?\\s*-?\\d`.

    Returns the character edges by class, each state's ε-predecessors (as a bit mask of the states whose
    ε-closure holds it), the start state and the accepting state."""
    a, sep, sep_done, b, b_done, t0, t1, t2, t3, accept = 0, 11, 12, 13, 24, 25, 26, 27, 28, 29
    edges: list[tuple[int, str, int]] = []
    _operand(a, sep, edges)
    edges += [(sep, "s", sep), (sep_done, "s", sep_done), (sep_done, "", b)]
    edges += [(sep, op, sep_done) for op in _OPERATORS]
    _operand(b, b_done, edges)
    edges += [(b_done, "", sep), (b_done, "", t0), (t0, "s", t0), (t0, "=", t1), (t1, "s", t1), (t1, "$", t2),
              (t1, "", t2), (t2, "s", t2), (t2, "-", t3), (t2, "", t3), (t3, "d", accept)]
    closure = [1 << s for s in range(accept + 1)]  # closure[s]: the states s reaches by ε edges alone
    for _ in range(accept + 1):
        for src, label, dst in edges:
            if not label:
                closure[src] |= closure[dst]
    predecessors = [sum(1 << q for q in range(accept + 1) if closure[q] >> s & 1) for s in range(accept + 1)]
    by_class: dict[str, list[tuple[int, int]]] = {}
    for src, label, dst in edges:
        if label:
            by_class.setdefault(label, []).append((src, dst))
    return by_class, predecessors, a, accept


_BY_CLASS, _PREDECESSORS, _START, _ACCEPT = _automaton()


@cache
def _classes(char: str) -> tuple[str, ...]:
    """The edge labels a character satisfies, with the regex's own meaning of `\\d` and `\\s`."""
    labels = [char] if char in "($-,.%)=" + _OPERATORS else []
    return tuple(labels + ["d"] * bool(re.fullmatch(r"\d", char)) + ["s"] * bool(re.fullmatch(r"\s", char)))


def _starts(run: str) -> list[bool]:
    """starts[i]: EQUATION matches at run[i] (some prefix of run[i:] is in its language)."""
    accepting = _PREDECESSORS[_ACCEPT]
    good = accepting  # states from which the rest of the run (here: nothing) holds an accepted prefix
    starts = [False] * len(run)
    for i in range(len(run) - 1, -1, -1):
        direct = 1 << _ACCEPT
        for label in _classes(run[i]):
            for src, dst in _BY_CLASS.get(label, ()):
                if good >> dst & 1:
                    direct |= 1 << src
        good = 0
        while direct:
            low = direct & -direct
            good |= _PREDECESSORS[low.bit_length() - 1]
            direct ^= low
        starts[i] = bool(good >> _START & 1)
    return starts


def equations(text: str) -> list[tuple[str, str]]:
    """Exactly `EQUATION.findall(text)`: (left-hand side, stated result) of each equation, in order."""
    found: list[tuple[str, str]] = []
    for run in _RUN.finditer(text):
        if "=" not in run[0]:
            continue
        starts, pos = _starts(run[0]), run.start()
        for i, viable in enumerate(starts):
            at = run.start() + i
            if not viable or at < pos:
                continue
            match = EQUATION.match(text, at, run.end())
            if match is not None:  # always, by construction of `starts`
                found.append((match[1], match[2]))
                pos = match.end()
    return found

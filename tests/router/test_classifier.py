"""Classifier features, the bundled weights, and the fixed `router score` interface."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from router.classifier import BUNDLED_WEIGHTS, DifficultyClassifier
from router.features import (
    DRAFT_FEATURES,
    PROMPT_FEATURES,
    arithmetic_errors,
    draft_features,
    prompt_features,
)
from router.scoring import ScoreInputError, read_requests, score_file

needs_weights = pytest.mark.skipif(not BUNDLED_WEIGHTS.exists(), reason="bundled classifier weights missing")
PROMPT = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def test_feature_vectors_have_fixed_length_and_are_deterministic() -> None:
    mcq = "Which is NOT prime?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer:"
    assert len(prompt_features(mcq)) == len(PROMPT_FEATURES) and prompt_features(mcq) == prompt_features(mcq)
    features = dict(zip(PROMPT_FEATURES, prompt_features(mcq), strict=True))
    assert features["is_mcq"] == 1 and features["negation"] == 1 and features["numeric_choices"] == 4
    assert len(draft_features(None)) == len(DRAFT_FEATURES) == len(draft_features("x"))


def test_arithmetic_checks_catch_wrong_working() -> None:
    assert arithmetic_errors("3 + 4 = 8 so the answer is 8") == (0, 1, 1)
    assert arithmetic_errors("He has <<3+4=7>>7 apples. 7 * 2 = 14") == (0, 0, 2)
    assert arithmetic_errors("<<12/4=4>>4") == (1, 0, 1)
    clean = dict(zip(DRAFT_FEATURES, draft_features("3 + 4 = 7\n#### 7"), strict=True))
    broken = dict(zip(DRAFT_FEATURES, draft_features("3 + 4 = 8\nso maybe 8"), strict=True))
    assert clean["draft_has_final"] == 1 and clean["draft_eq_errors"] == 0
    assert broken["draft_has_final"] == 0 and broken["draft_eq_errors"] == 1 and broken["draft_hedges"] == 1


def test_score_input_errors_name_the_line(tmp_path: Path) -> None:
    cases = {'{"id": 1, "prompt": "a"}\n{"id": 2, "prompt": ': "line 2: not valid JSON",
             '{"id": 1, "prompt": "a"}\n\n{"prompt": "b"}\n': 'line 3: each line needs an "id"',
             '{"id": 1, "prompt": 5}\n': 'line 1: "prompt" must be a string',
             '{"id": 1, "prompt": "a", "draft": 3}\n': 'line 1: "draft" must be a string'}
    for text, message in cases.items():
        path = tmp_path / "in.jsonl"
        path.write_text(text)
        with pytest.raises(ScoreInputError) as info:
            read_requests(path)
        assert str(info.value).startswith(message)


@needs_weights
def test_bundled_weights_score_in_order_and_use_the_draft(tmp_path: Path) -> None:
    classifier = DifficultyClassifier.load()
    rows = [{"id": "a", "prompt": PROMPT}, {"id": 7, "prompt": PROMPT, "draft": "3 + 4 = 7\n#### 7"},
            {"id": "c", "prompt": PROMPT, "draft": "3 + 4 = 9, I think maybe 12"}]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    assert score_file(src, out, classifier) == 3
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["id"] for s in scored] == ["a", 7, "c"]
    assert all(0 <= s["p_hosted"] <= 1 for s in scored)
    assert scored[2]["p_hosted"] > scored[1]["p_hosted"]  # a broken draft needs the hosted model more
    assert classifier.threshold_for_share(0.1) >= classifier.threshold_for_share(0.5)


@needs_weights
def test_the_cli_contract(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "x", "prompt": "What is 2 + 2?"}\n{"id": "y"}\n')
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "router", "score", "--input", str(src),
                             "--output", str(tmp_path / "o.jsonl")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "line 2" in result.stderr and not (tmp_path / "o.jsonl").exists()

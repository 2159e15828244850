"""`route explain` decides a rule on `p_hosted` with the same classifier score the gateway computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.classifier import DifficultyClassifier
from tests.gateway.test_cli import draftgate

CONFIG = """\
local:
  enabled: false
models:
  - name: h
    model: openai/gpt-4o-mini
policies:
  default: local
  rules:
    - name: hard
      when: {p_hosted: {gte: THRESHOLD}}
      action: {hosted: h}
"""
PROMPT = "What is 2+2?"


@pytest.mark.parametrize("margin", [-0.01, 0.01], ids=["below-the-score", "above-the-score"])
def test_route_explain_scores_the_prompt_like_the_gateway(tmp_path: Path, margin: float) -> None:
    score = DifficultyClassifier.load().score([PROMPT])[0]
    threshold = score + margin
    (tmp_path / "draftgate.yaml").write_text(CONFIG.replace("THRESHOLD", f"{threshold:.6f}"))
    (tmp_path / "req.json").write_text(json.dumps({"model": "auto", "messages": [{"role": "user", "content": PROMPT}]}))
    result = draftgate("route", "explain", "req.json", "--config", "draftgate.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"classifier p_hosted: {score:.3f}" in result.stdout
    if margin < 0:  # the score clears the threshold: the rule matches, as it would in the gateway
        assert "matched rule: hard" in result.stdout and "decision: hosted (h)" in result.stdout
    else:
        assert "matched rule: (default)" in result.stdout

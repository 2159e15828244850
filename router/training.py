"""`draftgate router train`: fits the difficulty classifier on routing-outcome data (and ledger outcomes).

Label: 1 when the strong (hosted) model answered correctly and the weak (local) one did not, i.e. the
request needed the hosted model. GSM8K rows carry the weak model's real answer, so they are used twice:
prompt only, and with the draft, teaching the draft features.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from router.classifier import Embedder, Weights, feature_matrix

DATA_FILES = ("gsm8k_dev.jsonl", "mmlu_dev.jsonl")


@dataclass(frozen=True)
class TrainingRow:
    """One outcome: label 1.0 means the hosted model was needed."""

    prompt: str
    label: float
    draft: str | None = None
    source: str = "ledger"
    group: str = ""


@dataclass(frozen=True)
class TrainReport:
    rows: int
    positives: int
    weights_path: str
    sources: dict[str, int]


def read_outcomes(data_dir: Path) -> list[TrainingRow]:
    """RouteLLM outcome rows (prompt only, and with the draft where the data has one)."""
    rows = []
    for name in DATA_FILES:
        for line in (data_dir / name).read_text(encoding="utf-8").split("\n"):  # not splitlines(): U+2028 in text
            if not line.strip():
                continue
            item = json.loads(line)
            label = float(item["strong_score"] > item["weak_score"])
            group = item.get("subject") or item["source"]
            rows.append(TrainingRow(item["prompt"], label, None, item["source"], group))
            if item.get("weak_response"):
                rows.append(TrainingRow(item["prompt"], label, item["weak_response"], item["source"] + "+draft",
                                        group))
    return rows


def fit(rows: Sequence[TrainingRow], embeddings: np.ndarray | None, *, c: float = 0.5) -> Weights:
    """Standardize, fit a logistic regression, record score quantiles for threshold calibration."""
    x = feature_matrix(embeddings, [r.prompt for r in rows], [r.draft for r in rows], [None] * len(rows))
    y = np.array([r.label for r in rows])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=c, max_iter=2000, class_weight="balanced")
    model.fit((x - mean) / scale, y)
    z = ((x - mean) / scale) @ model.coef_[0] + model.intercept_[0]
    scores = 1 / (1 + np.exp(-z))
    return Weights(mean=mean.astype(np.float32), scale=scale.astype(np.float32),
                   coef=model.coef_[0].astype(np.float32), intercept=float(model.intercept_[0]),
                   quantiles=np.quantile(scores, np.linspace(0, 1, 101)).astype(np.float32),
                   use_embedding=embeddings is not None)


def train(data_dir: Path, out_path: Path, *, extra_rows: Sequence[TrainingRow] = (),
          embedder: Any = None) -> TrainReport:
    rows = read_outcomes(data_dir) + list(extra_rows)
    embeddings = (embedder or Embedder()).encode([r.prompt for r in rows])
    weights = fit(rows, embeddings)
    weights.save(out_path)
    sources: dict[str, int] = {}
    for r in rows:
        sources[r.source] = sources.get(r.source, 0) + 1
    return TrainReport(rows=len(rows), positives=int(sum(r.label for r in rows)), weights_path=str(out_path),
                       sources=sources)

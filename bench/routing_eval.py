"""Cross-validated routing quality of the difficulty classifier (APGR, CPT) next to the baselines.

Outer folds: MMLU grouped by subject (clinical_knowledge and college_medicine share questions, so they
share a fold), GSM8K random; 5 each. Every model is fitted on the training folds only, and its L2
strength is chosen there by grouped inner cross-validation (nested CV): the test folds choose nothing.
APGR/CPT are computed inside each test fold with ../shared/tools/routing_eval.py, then averaged.
Embeddings are cached outside the repo.

    python bench/routing_eval.py [--data ../shared/data/routellm] [--out bench/results/routing.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, KFold

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from router.classifier import EMBED_MAX_TOKENS, cheap_features, p_hosted, project
from router.training import DATA_FILES, PCA_COMPONENTS, TrainingRow, fit, read_outcomes

FOLDS = 5
# The committed figures of the previous classifier (MiniLM + 21 prompt features, logistic regression on
# "strong right and weak wrong", one model for every request), kept for comparison.
BEFORE = {"mmlu": {"cheap_features": {"apgr": 0.4361, "cpt50": 51.4517, "cpt80": 77.074},
                   "minilm_plus_features": {"apgr": 0.4855, "cpt50": 48.8847, "cpt80": 74.8748}},
          "gsm8k": {"cheap_features": {"apgr": 0.6297, "cpt50": 34.7449, "cpt80": 59.0204},
                    "minilm_plus_features": {"apgr": 0.5911, "cpt50": 38.0102, "cpt80": 62.7959},
                    "with_draft": {"apgr": 0.7075, "cpt50": 19.6429, "cpt80": 50.551}}}


ENTRIES = {
    "random": "routing_eval.py's random router (one seed per fold)",
    "length": "prompt length in characters (routing_eval.py's length baseline)",
    "previous_label": "the shipped features and model, trained on the previous label (hosted right and local wrong)",
    "features_only": "the shipped label and heads without the embedding components",
    "classifier": "what `draftgate router train` ships, prompt only",
    "with_draft": "the same, given the weak model's real answer as the draft (draft head)",
    "oracle_solution_steps": ("GSM8K, not a router: the number of '=' in the strong model's recorded worked answer, "
                              "i.e. how many calculations the problem really takes; unknowable at request time, "
                              "it bounds what an estimate of a problem's difficulty from its prompt can reach"),
    "oracle_solution_length": "GSM8K, not a router: the length of the strong model's recorded answer, likewise",
}


def load_tool(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("routing_eval", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["routing_eval"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def outcomes(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(weak, strong) scores aligned with read_outcomes' rows (a GSM8K item twice: prompt, then draft)."""
    weak, strong = [], []
    for name in DATA_FILES:
        for line in (data_dir / name).read_text(encoding="utf-8").split("\n"):
            if line.strip():
                item = json.loads(line)
                copies = 2 if item.get("weak_response") else 1
                weak += [item["weak_score"]] * copies
                strong += [item["strong_score"]] * copies
    return np.array(weak, dtype=float), np.array(strong, dtype=float)


def solutions(data_dir: Path) -> dict[str, str]:
    """The strong model's recorded answer to each GSM8K prompt (for the oracle entries only)."""
    lines = (data_dir / "gsm8k_dev.jsonl").read_text(encoding="utf-8").split("\n")
    return {item["prompt"]: item["strong_response"] for item in map(json.loads, filter(str.strip, lines))}


def embeddings_for(prompts: list[str], cache: Path) -> np.ndarray:
    if cache.exists():
        data = np.load(cache)
        if data.shape[0] == len(prompts):
            return np.asarray(data)
    from router.classifier import Embedder

    vectors = Embedder().encode(prompts)
    np.save(cache, vectors)
    return vectors


def fold_metrics(tool: Any, p: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> dict[str, float | None]:
    m = tool.metrics(p, weak, strong)
    return {k: m[k] for k in ("apgr", "cpt50", "cpt80")}


def mean_of(folds: list[dict[str, float | None]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("apgr", "cpt50", "cpt80"):
        values = [float(v) for f in folds if (v := f[key]) is not None]
        out[key] = round(float(np.mean(values)), 4) if values else None
    out["apgr_per_fold"] = [None if f["apgr"] is None else round(float(f["apgr"]), 3) for f in folds]
    return out


def scorer(rows: list[TrainingRow], cheap: list[np.ndarray], emb: np.ndarray, train: np.ndarray,
           components: int, binary_label: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """Fits on the training rows; returns a function scoring test rows (drafts are used where rows have one)."""
    # The previous label, "hosted right and local wrong", as one target: hosted always right, local right = not.
    picked = [replace(rows[i], weak=float(rows[i].label <= 0), strong=1.0) if binary_label else rows[i]
              for i in train]
    weights = fit(picked, emb[train] if components else None, components=components,
                  cheap=[cheap[i] for i in train])

    def score(test: np.ndarray) -> np.ndarray:
        pcs = project(emb[test], weights.pca_mean, weights.pca_components, len(test))
        return p_hosted(weights, [rows[i].prompt for i in test], [rows[i].draft for i in test],
                        [None] * len(test), pcs, [cheap[i] for i in test])
    return score


def evaluate(data_dir: Path, tool: Any, cache_dir: Path) -> dict[str, Any]:
    rows = read_outcomes(data_dir)
    weak, strong = outcomes(data_dir)
    prompts = sorted({r.prompt for r in rows})
    index = {p: i for i, p in enumerate(prompts)}
    emb = embeddings_for(prompts, cache_dir / f"minilm{EMBED_MAX_TOKENS}.npy")[[index[r.prompt] for r in rows]]
    cheap = [cheap_features(r.prompt, r.draft) for r in rows]
    solved = solutions(data_dir)
    results: dict[str, Any] = {}
    for source, splitter in (("mmlu", GroupKFold(n_splits=FOLDS)),
                             ("gsm8k", KFold(FOLDS, shuffle=True, random_state=0))):
        base = np.array([i for i, r in enumerate(rows) if r.source == source])
        others = np.array([i for i, r in enumerate(rows) if not r.source.startswith(source)])
        drafts = {rows[i].prompt: i for i, r in enumerate(rows) if r.source == source + "+draft"}
        groups = np.array([rows[i].group for i in base])
        per: dict[str, list[dict[str, float | None]]] = {}

        def add(name: str, p: np.ndarray, test: np.ndarray, per: dict[str, list[Any]] = per) -> None:
            per.setdefault(name, []).append(fold_metrics(tool, p, weak[test], strong[test]))

        for train_idx, test_idx in splitter.split(base, groups=groups):
            train_drafts = [drafts[rows[i].prompt] for i in base[train_idx] if rows[i].prompt in drafts]
            train = np.concatenate([base[train_idx], others, train_drafts]).astype(int)
            test = base[test_idx]
            add("random", np.random.default_rng(0).random(len(test)), test)
            add("length", np.array([len(rows[i].prompt) for i in test], dtype=float), test)
            add("previous_label", scorer(rows, cheap, emb, train, PCA_COMPONENTS, binary_label=True)(test), test)
            add("features_only", scorer(rows, cheap, emb, train, 0)(test), test)
            final = scorer(rows, cheap, emb, train, PCA_COMPONENTS)  # what `router train` ships
            add("classifier", final(test), test)
            if source == "gsm8k":
                worked = [solved[rows[i].prompt] for i in test]
                add("oracle_solution_steps", np.array([w.count("=") for w in worked], dtype=float), test)
                add("oracle_solution_length", np.array([len(w) for w in worked], dtype=float), test)
                with_draft = np.array([drafts[rows[i].prompt] for i in test])
                add("with_draft", final(with_draft), with_draft)
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
    result = {"method": (f"{FOLDS}-fold CV; MMLU grouped by subject; APGR/CPT inside each test fold, averaged; "
                         "L2 penalty and embedding components chosen per head on each training fold by grouped "
                         "inner CV (nested): the test folds choose nothing"),
              "entries": ENTRIES, "results": evaluate(args.data, load_tool(args.tool), args.cache),
              "before": BEFORE}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

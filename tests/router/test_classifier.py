"""Classifier features, draft checks, training, the bundled weights, and the fixed `router score` interface."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from router.classifier import (
    BUNDLED_WEIGHTS,
    FORMAT_VERSION,
    MAX_TEXT_CHARS,
    ClassifierUnavailableError,
    DifficultyClassifier,
    Weights,
    head_for,
)
from router.draft_checks import DRAFT_FEATURES, arithmetic_errors, draft_features
from router.equations import EQUATION, equations
from router.features import PROMPT_FEATURES, prompt_features, split_choices
from router.scoring import ScoreInputError, read_requests, score_file
from router.training import TrainingRow, choose, fit, fit_head, gain_area, train

needs_weights = pytest.mark.skipif(not BUNDLED_WEIGHTS.exists(), reason="bundled classifier weights missing")
PROMPT = "Tom has 3 apples and buys 4 more, then doubles what he has. How many apples does he have?"
RIGHT = "Tom has 3 + 4 = <<3+4=7>>7 apples.\nThen 7 * 2 = <<7*2=14>>14 apples.\n#### 14"
WRONG_SUMS = "Tom has 3 + 4 = <<3+4=8>>8 apples.\nThen 8 * 2 = <<8*2=18>>18 apples.\n#### 18"


def named(names: tuple[str, ...], values: list[float]) -> dict[str, float]:
    assert len(values) == len(names)
    return dict(zip(names, values, strict=True))


def test_prompt_features_describe_the_question_shape() -> None:
    mcq = "Which is NOT prime?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer:"
    assert prompt_features(mcq) == prompt_features(mcq)
    f = named(PROMPT_FEATURES, prompt_features(mcq))
    assert f["is_mcq"] == 1 and f["negation"] == 1 and f["numeric_choices"] == 1 and f["question_mark"] == 1
    claims = named(PROMPT_FEATURES, prompt_features(
        "Statement 1 | Every group is abelian. Statement 2 | Z is cyclic.\nA. True, True\nB. False, False\n"
        "C. True, False\nD. False, True\nAnswer:"))
    assert claims["enumerated_claims"] == 1 and claims["choice_word_overlap"] > 0.3 > f["choice_word_overlap"]
    assert split_choices(mcq)[1] == ["2", "3", "4", "5"] and split_choices(PROMPT) == (PROMPT, [])
    plain = named(PROMPT_FEATURES, prompt_features(PROMPT))
    assert plain["is_mcq"] == 0 and plain["stem_numbers"] > 0 and plain["step_words"] > 0


def test_arithmetic_checks_catch_wrong_working() -> None:
    assert arithmetic_errors("3 + 4 = 8 so the answer is 8") == (0, 1, 1)
    assert arithmetic_errors("He has <<3+4=7>>7 apples. 7 * 2 = 14") == (0, 0, 2)
    assert arithmetic_errors("<<12/4=4>>4") == (1, 0, 1)
    assert arithmetic_errors("<<2/3*24=32>>32 spoons") == (1, 0, 1)
    assert arithmetic_errors("44 + 48 + 24 = 117 fruits") == (0, 1, 1)  # chains, not only `a op b`
    assert arithmetic_errors("$5 \\* 1.25 = $6.25, and 100 / 3 = 33.33") == (0, 0, 2)  # escapes; rounding


def test_draft_checks() -> None:
    assert len(draft_features(None)) == len(DRAFT_FEATURES) == len(draft_features("x"))
    assert draft_features(None)[0] == 0
    clean = named(DRAFT_FEATURES, draft_features(RIGHT, prompt=PROMPT))
    broken = named(DRAFT_FEATURES, draft_features("3 + 4 = 8 and then I think it is 16.5", prompt=PROMPT))
    assert clean["draft_has_final"] == 1 and clean["draft_any_error"] == 0 and clean["draft_final_not_integer"] == 0
    assert clean["draft_final_is_last_result"] == 1 and clean["draft_prompt_numbers_used"] == 1
    assert broken["draft_has_final"] == 0 and broken["draft_eq_errors"] == 1 and broken["draft_hedges"] > 0
    assert broken["draft_final_not_integer"] == 1
    cut = named(DRAFT_FEATURES, draft_features("Tom has 3 + 4 = 7 apples and then he", prompt=PROMPT))
    assert cut["draft_truncated"] == 1 and clean["draft_truncated"] == 0
    invented = named(DRAFT_FEATURES, draft_features("He had 3 + 4 = 7, plus 9 from his aunt: 16.\n#### 16",
                                                    prompt=PROMPT))
    assert invented["draft_unexplained_numbers"] > 0 == clean["draft_unexplained_numbers"]


def test_heads_are_chosen_by_request_kind() -> None:
    assert head_for("Q?\nA. x\nB. y\nAnswer:", None) == "choice"
    assert head_for(PROMPT, None) == "open" and head_for(PROMPT, "7") == "draft"


def test_gain_area_is_apgr() -> None:
    gains = np.array([1.0, 0.0, 1.0, 0.0])
    assert gain_area(gains, gains) == pytest.approx(0.75)  # gap recovered 0, 1/2, 1, 1, 1: trapezoid area
    assert gain_area(-gains, gains) == pytest.approx(0.25)
    assert gain_area(np.zeros(2), np.array([-1.0, 0.0])) is None  # no gap to recover


def synthetic_rows(n: int = 400) -> list[TrainingRow]:
    """Long prompts need the hosted model; a draft with a wrong sum means the local one failed."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        long = bool(rng.random() < 0.5)
        prompt = f"Question {i}: " + ("a long and winding question about apples " * 8 if long else "short?")
        weak = float(rng.random() < (0.2 if long else 0.9))
        rows.append(TrainingRow(prompt, 1.0 - weak, None, "synthetic", f"g{i % 10}", weak, 1.0))
        rows.append(TrainingRow(prompt, 1.0 - weak, "2 + 2 = 4\n#### 4" if weak else "2 + 2 = 5\n#### 5",
                                "synthetic+draft", f"g{i % 10}", weak, 1.0))
    return rows


def test_training_learns_the_direction_and_round_trips(tmp_path: Path) -> None:
    rows = synthetic_rows()
    weights = fit(rows, None)
    assert weights.heads["open"].l2 > 0 and not weights.use_embedding
    classifier = DifficultyClassifier(weights)
    short, long = "Question 1: short?", "Question 2: " + "a long and winding question about apples " * 8
    assert classifier.score([long])[0] > classifier.score([short])[0]
    assert classifier.score([short], ["2 + 2 = 5\n#### 5"])[0] > classifier.score([short], ["2 + 2 = 4\n#### 4"])[0]
    path = tmp_path / "w.npz"
    weights.save(path)
    again = DifficultyClassifier(Weights.load(path))
    assert again.score([long, short]) == classifier.score([long, short])
    np.savez(path, mean=np.zeros(3))  # a file from the previous format
    with pytest.raises(ClassifierUnavailableError, match="older classifier"):
        Weights.load(path)


class HashEmbedder:
    """Deterministic stand-in vectors (the real MiniLM is exercised by the bundled-weights tests)."""

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.array([np.random.default_rng(sum(map(ord, t))).normal(size=384) for t in texts], np.float32)


def test_train_writes_weights_with_ledger_outcomes(tmp_path: Path) -> None:
    gsm = [{"id": f"g{i}", "source": "gsm8k", "subject": None, "prompt": f"Ann has {i} pens and {i + 2} cups. "
            "How many?" * (1 + i % 3), "weak_score": float(i % 3 == 0), "strong_score": 1.0,
            "weak_response": f"{i} + {i + 2} = {2 * i + 2 + (i % 3 != 0)}\n#### {2 * i + 2}"} for i in range(60)]
    mmlu = [{"id": f"m{i}", "source": "mmlu", "subject": f"s{i % 6}", "prompt": f"Which is {i}?\nA. a\nB. b\n"
             "C. c\nD. d\nAnswer:", "weak_score": float(i % 2), "strong_score": float(i % 5 != 0)}
            for i in range(60)]
    for name, items in (("gsm8k_dev.jsonl", gsm), ("mmlu_dev.jsonl", mmlu)):
        (tmp_path / name).write_text("".join(json.dumps(item) + "\n" for item in items))
    ledger = [TrainingRow("Sort these: 5, 2, 9", 1.0), TrainingRow("Sort these: 5, 2, 9", 1.0, "9, 5, 2")]
    report = train(tmp_path, tmp_path / "w.weights", extra_rows=ledger, embedder=HashEmbedder())
    assert report.rows == 60 * 2 + 60 + 2 and report.sources["ledger"] == 2
    assert sorted(p.name for p in tmp_path.glob("w.*")) == ["w.weights"]  # the path given, no ".npz" added
    classifier = DifficultyClassifier(Weights.load(tmp_path / "w.weights"), HashEmbedder())
    scores = classifier.score([gsm[0]["prompt"], mmlu[0]["prompt"]], [None, None])
    assert all(0 <= s <= 1 for s in scores)


def test_inner_choice_uses_only_the_given_rows() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    targets = np.stack([np.ones(200), (x[:, 0] < 0).astype(float)], axis=1)
    k, l2 = choose(x, targets, [f"g{i % 7}" for i in range(200)], 0)
    assert k == 0 and l2 in (10.0, 100.0, 1000.0)
    head = fit_head(x, targets, l2)
    assert head.predict(np.array([[2.0, 0, 0]]))[0] > head.predict(np.array([[-2.0, 0, 0]]))[0]


def test_ledger_rows_read_as_outcomes() -> None:
    assert TrainingRow("p", 1.0).scores() == (0.0, 1.0)  # escalated: local wrong, hosted right
    assert TrainingRow("p", 0.0).scores() == (1.0, 1.0)  # served: local right
    assert TrainingRow("p", -1.0, weak=1.0, strong=0.0).scores() == (1.0, 0.0)


def test_score_input_errors_name_the_line(tmp_path: Path) -> None:
    cases = {'{"id": 1, "prompt": "a"}\n{"id": 2, "prompt": ': "line 2: not valid JSON",
             '{"id": 1, "prompt": "a"}\n\n{"prompt": "b"}\n': 'line 3: each line needs an "id"',
             '[{"id": 1, "prompt": "a"}]\n': "line 1: not a JSON object but an array (each line is {",
             '"What is 2 + 2?"\n': "line 1: not a JSON object but a string",
             '{"id": 1, "prompt": 5}\n': 'line 1: "prompt" must be a string',
             '{"id": 1, "prompt": "a", "draft": 3}\n': 'line 1: "draft" must be a string',
             '{"id": NaN, "prompt": "a"}\n': "line 1: not valid JSON (NaN is not valid JSON)",
             '{"id": 1, "prompt": "\\ud800"}\n': 'line 1: "prompt" holds a lone surrogate',
             "[" * 100_000 + "]" * 100_000 + "\n": "line 1: not valid JSON",
             '{"id": 1, "prompt": "a\udcff"}\n': "line 1: not UTF-8 text",
             '{"id": 1, "id": 2, "prompt": "a"}\n': "line 1: not valid JSON (the key 'id' appears twice"}
    for text, message in cases.items():
        path = tmp_path / "in.jsonl"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))  # \udcff: the byte 0xff
        with pytest.raises(ScoreInputError) as info:
            read_requests(path)
        assert str(info.value).startswith(message)


@needs_weights
def test_bundled_weights_score_in_order_and_judge_the_draft(tmp_path: Path) -> None:
    classifier = DifficultyClassifier.load()
    no_final = "Tom has 3 + 4 = 7 apples. Then he doubles them, so he has"
    odd_final = RIGHT.replace("14", "14.5")
    rows = [{"id": "a", "prompt": PROMPT}, {"id": 7, "prompt": PROMPT, "draft": RIGHT},
            {"id": "c", "prompt": PROMPT, "draft": WRONG_SUMS}, {"id": "d", "prompt": PROMPT, "draft": no_final},
            {"id": "e", "prompt": PROMPT, "draft": odd_final}]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    assert score_file(src, out, classifier) == 5
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["id"] for s in scored] == ["a", 7, "c", "d", "e"]
    assert all(0 <= s["p_hosted"] <= 1 for s in scored)
    right, wrong_sums, cut, odd = (scored[i]["p_hosted"] for i in (1, 2, 3, 4))
    assert wrong_sums > right  # the same working with arithmetic that does not hold needs the hosted model more
    assert cut > right and odd > right  # no final answer; a fractional count
    assert classifier.threshold_for_share(0.1) >= classifier.threshold_for_share(0.5)


@needs_weights
def test_scoring_any_prompt_takes_bounded_time() -> None:
    """Options are compared pairwise: 1,600 `A. ...` lines (47 KB) took 90 s to score, and such a prompt reaches
    the classifier from any client when a rule reads `p_hosted`. The classifier reads the first MAX_TEXT_CHARS."""
    classifier = DifficultyClassifier(Weights.load(BUNDLED_WEIGHTS), HashEmbedder())
    options = "Which?\n" + "".join(f"{'ABCD'[i % 4]}. option {i}\n" for i in range(20_000))
    start = time.perf_counter()
    scores = classifier.score([options, "Tom has 3 apples. " * 50_000], [None, None])
    assert time.perf_counter() - start < 2 and all(0 <= s <= 1 for s in scores)
    assert classifier.score([options]) == classifier.score([options[:MAX_TEXT_CHARS]])


@needs_weights
def test_a_long_operator_chain_in_a_draft_scores_in_linear_time() -> None:
    """`1+1+…+1` (4,096 terms, never `= number`) made the equation regex walk the chain from every operand:
    ~10 s for one draft, so `router score` could not get through a file of them."""
    classifier = DifficultyClassifier(Weights.load(BUNDLED_WEIGHTS), HashEmbedder())
    chains = ["+".join(["1"] * 4096), "+".join(["1"] * 3000) + " 1 = 2", "1 " + "+ 1 " * 2000 + "="]
    start = time.perf_counter()
    scores = classifier.score([PROMPT] * len(chains), chains)
    assert time.perf_counter() - start < 1.5 and all(0 <= s <= 1 for s in scores)


def test_equations_are_what_the_equation_regex_finds() -> None:
    """The linear search must give the classifier exactly the features its weights were fitted on."""
    rng = random.Random(7)
    pieces = ["1", "23", "4,5", "6.7", ".", ",", "+", "-", "*", "/", "x", "×", "=", "(", ")", "$", "%", " ", "\n",
              "a", "=5", " = 12", "٣"]
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        assert equations(text) == EQUATION.findall(text), text
    assert equations(RIGHT + " 2 x 3 = 6, 1.2.3+4=7") == EQUATION.findall(RIGHT + " 2 x 3 = 6, 1.2.3+4=7")


@needs_weights
def test_the_cli_contract(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "x", "prompt": "What is 2 + 2?"}\n{"id": "y"}\n')
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "router", "score", "--input", str(src),
                             "--output", str(tmp_path / "o.jsonl")], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 2 and "line 2" in result.stderr and not (tmp_path / "o.jsonl").exists()
    src.write_text('{"id": "x", "prompt": "What is 2 + 2?"}\n')
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "router", "score", "--input", str(src),
                             "--output", str(tmp_path / "o.jsonl")], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0 and len((tmp_path / "o.jsonl").read_text().splitlines()) == 1
    assert "\r" not in result.stdout + result.stderr  # lines, not a tqdm bar loading MiniLM
    assert "Loading weights" not in result.stdout + result.stderr


def test_bad_training_data_and_weights_files_are_clear_errors(tmp_path: Path) -> None:
    from router.classifier import ClassifierUnavailableError
    from router.errors import TrainingDataError

    (tmp_path / "mmlu_dev.jsonl").write_text("")
    for line, message in (('{"prompt": "q"}', "gsm8k_dev.jsonl:2: not an outcome row: missing field 'weak_score'"),
                          ('{"id": 1, "source": "gsm8k", "prompt": "q", "weak_score": "high", "strong_score": 1}',
                           "gsm8k_dev.jsonl:2: not an outcome row: could not convert"),
                          ("[1, 2]", "gsm8k_dev.jsonl:2: not an outcome row")):
        (tmp_path / "gsm8k_dev.jsonl").write_text("\n" + line + "\n")
        with pytest.raises(TrainingDataError, match=message.replace("(", r"\(")):
            train(tmp_path, tmp_path / "w.npz", embedder=HashEmbedder())
    (tmp_path / "gsm8k_dev.jsonl").write_text("")
    with pytest.raises(TrainingDataError, match="0 outcome row\\(s\\); training needs at least 50"):
        train(tmp_path, tmp_path / "w.npz", embedder=HashEmbedder())
    with pytest.raises(TrainingDataError, match="cannot read the outcome data"):
        train(tmp_path / "missing", tmp_path / "w.npz", embedder=HashEmbedder())
    for name, content in (("text.npz", b"not a zip"), ("empty.npz", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ClassifierUnavailableError, match="is not a classifier weights file"):
            Weights.load(tmp_path / name)
    np.savez(tmp_path / "partial.npz", version=np.array([FORMAT_VERSION]))
    with pytest.raises(ClassifierUnavailableError, match="incomplete classifier weights file"):
        Weights.load(tmp_path / "partial.npz")


def test_train_refuses_a_destination_it_cannot_write_before_it_reads_or_fits(tmp_path: Path) -> None:
    """`router train --out DIR` fitted for minutes, then failed naming save's temp file ('.t.x2pv76ec.tmp')."""
    (tmp_path / "file").write_text("")
    for out, error in ((tmp_path, IsADirectoryError), (tmp_path / "file" / "w.npz", NotADirectoryError)):
        with pytest.raises(error) as info:  # not TrainingDataError for the missing data: the check comes first
            train(tmp_path / "no-data", out, embedder=HashEmbedder())
        assert ".tmp" not in str(info.value) and str(out.parent if error is NotADirectoryError else out) in str(
            info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no temp file, no folder left behind
    Weights.check_destination(tmp_path / "new" / "deeper" / "w.npz")  # save creates missing folders: fine
    assert not (tmp_path / "new").exists()
    if Path("/proc/self").is_dir():  # a folder where no file can be created, even by root
        with pytest.raises(OSError, match=r"no file can be created in /proc\)") as failed:
            Weights.check_destination(Path("/proc/w.npz"))
        assert ".tmp" not in str(failed.value) and "'/proc/w.npz'" in str(failed.value)


def test_ledger_outcomes_of_a_ledger_never_migrated_are_empty(tmp_path: Path) -> None:
    from gateway.outcomes import ledger_outcomes

    assert ledger_outcomes(f"sqlite:///{tmp_path}/never-started.db") == []


def test_a_save_that_fails_midway_keeps_the_old_weights(tmp_path: Path) -> None:
    """`router train` writes over the bundled weights by default: a failure while writing (here an array that
    cannot be stored, standing in for a full disk or Ctrl-C) left a truncated file the gateway could not load."""
    from dataclasses import replace

    weights = fit(synthetic_rows(), None)
    path = tmp_path / "classifier.npz"
    weights.save(path)
    path.chmod(0o640)
    before = path.read_bytes()
    broken = replace(weights, quantiles=np.array([lambda: None], dtype=object))  # pickling it fails
    with pytest.raises(Exception, match="pickle"):
        broken.save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["classifier.npz"]
    Weights.load(path)
    weights.save(path)
    assert path.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode
    fresh = tmp_path / "new" / "w.npz"
    weights.save(fresh)
    assert fresh.stat().st_mode & 0o777 == 0o644

"""`draftgate router score --input PROMPTS.jsonl --output SCORES.jsonl`: the fixed scoring interface.

Input lines `{"id": ..., "prompt": ..., "draft"?: ...}`; output lines `{"id": ..., "p_hosted": float}`, one
per input, same order. A malformed line is an error naming its line number, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from router.classifier import DifficultyClassifier
from router.errors import RoutingError


class ScoreInputError(RoutingError):
    """A line of the input file is not a valid scoring request."""

    def __init__(self, line_no: int, message: str) -> None:
        super().__init__(f"line {line_no}: {message}")
        self.line_no = line_no


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_requests(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError:
                raise ScoreInputError(line_no, "not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                item = json.loads(line, parse_constant=_no_constants)
            except json.JSONDecodeError as exc:
                raise ScoreInputError(line_no, f"not valid JSON ({exc.msg})") from None
            except (ValueError, RecursionError) as exc:
                raise ScoreInputError(line_no, f"not valid JSON ({str(exc) or 'nested too deeply'})") from None
            if not isinstance(item, dict) or "id" not in item:
                raise ScoreInputError(line_no, "each line needs an \"id\"")
            if not isinstance(item.get("prompt"), str):
                raise ScoreInputError(line_no, "\"prompt\" must be a string")
            if item.get("draft") is not None and not isinstance(item["draft"], str):
                raise ScoreInputError(line_no, "\"draft\" must be a string when given")
            for field in ("prompt", "draft"):
                try:
                    (item.get(field) or "").encode("utf-8")
                except UnicodeEncodeError:
                    raise ScoreInputError(line_no, f"\"{field}\" holds a lone surrogate (\\ud800-\\udfff), "
                                                   "not text") from None
            rows.append(item)
    return rows


def score_file(input_path: Path, output_path: Path, classifier: DifficultyClassifier | None = None) -> int:
    """Scores every line; writes atomically (temp file + rename). Returns the number of rows."""
    rows = read_requests(input_path)
    model = classifier or DifficultyClassifier.load()
    scores = model.score([r["prompt"] for r in rows], [r.get("draft") for r in rows]) if rows else []
    output_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output_path.parent, prefix=".scores-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for row, score in zip(rows, scores, strict=True):
                out.write(json.dumps({"id": row["id"], "p_hosted": round(score, 6)}) + "\n")
        os.replace(tmp, output_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # an output path that is a folder must not leave a temp file behind
        raise
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        count = score_file(args.input, args.output)
    except (ScoreInputError, OSError) as exc:
        print(f"error: {args.input}: {exc}", file=sys.stderr)
        return 2
    print(f"scored {count} prompt(s) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

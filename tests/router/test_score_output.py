"""`draftgate router score`: where the scores go (links, FIFOs, devices, the input itself, modes) and which
input lines are refused. A stub classifier keeps these about files, not about the model."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from gateway.cli import app
from router.classifier import DifficultyClassifier
from router.scoring import ScoreInputError, read_requests

GOOD = '{"id": "a", "prompt": "What is 2 + 2?"}\n{"id": 7, "prompt": "hi", "draft": "hello"}\n'
SCORES = '{"id": "a", "p_hosted": 0.25}\n{"id": 7, "p_hosted": 0.25}\n'


class StubClassifier:
    """Scores every prompt 0.25: these tests are about files, not about the model."""

    def score(self, prompts: Sequence[str], drafts: Sequence[str | None] | None = None) -> list[float]:
        return [0.25] * len(prompts)


@pytest.fixture(autouse=True)
def stub_classifier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DifficultyClassifier, "load", classmethod(lambda cls, path=None: StubClassifier()))


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.jsonl"
    path.write_text(GOOD)
    return path


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def score(src: Path | str, out: Path | str) -> Result:
    return CliRunner().invoke(app, ["router", "score", "--input", str(src), "--output", str(out)])


def test_a_symlinked_output_is_written_through_to_its_target(tmp_path: Path, good: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "scores.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    result = score(good, link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and target.read_text() == SCORES
    dangling = tmp_path / "dangling.jsonl"  # as open() does: the missing target is created
    dangling.symlink_to(tmp_path / "real" / "new.jsonl")
    assert score(good, dangling).exit_code == 0
    assert dangling.is_symlink() and (tmp_path / "real" / "new.jsonl").read_text() == SCORES
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["new.jsonl", "scores.jsonl"]  # no temp left


def test_a_fifo_output_is_written_directly_for_its_reader(tmp_path: Path, good: Path) -> None:
    fifo = tmp_path / "scores.fifo"
    os.mkfifo(fifo)
    keeper = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # neither side blocks in open(); the reader ends when closed
    got: list[str] = []
    try:
        reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
        reader.start()
        result = score(good, fifo)
    finally:
        os.close(keeper)
    reader.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert got == [SCORES]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl", "scores.fifo"]


def test_a_character_device_is_written_directly_and_its_errors_name_it(tmp_path: Path, good: Path) -> None:
    full = tmp_path / "full"
    try:
        os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # a private /dev/full
    except OSError:
        pytest.skip("cannot create a device node here")
    result = score(good, full)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip() == f"error: cannot write {full}: no space left on device"
    assert stat.S_ISCHR(full.lstat().st_mode)
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert score(good, null).exit_code == 0 and stat.S_ISCHR(null.lstat().st_mode)


def test_the_output_may_not_be_the_input(tmp_path: Path, good: Path) -> None:
    (tmp_path / "hard.jsonl").hardlink_to(good)
    (tmp_path / "soft.jsonl").symlink_to(good)
    for out in (good, tmp_path / "hard.jsonl", tmp_path / "soft.jsonl", tmp_path / "." / "good.jsonl"):
        result = score(good, out)
        assert result.exit_code == 2, out
        assert result.stderr.strip() == f"error: cannot write {out}: it is the input file", out
        assert good.read_text() == GOOD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl", "hard.jsonl", "soft.jsonl"]


def test_a_missing_output_directory_is_an_error_naming_the_output(tmp_path: Path, good: Path) -> None:
    out = tmp_path / "nope" / "deeper" / "out.jsonl"
    result = score(good, out)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: cannot write {out}: directory {out.parent} does not exist"
    assert not (tmp_path / "nope").exists()
    not_dir = tmp_path / "good.jsonl" / "out.jsonl"
    result = score(good, not_dir)
    assert result.exit_code == 2 and result.stderr.startswith(f"error: cannot write {not_dir}: ")


def test_a_directory_output_is_named_without_a_temp_name(tmp_path: Path, good: Path) -> None:
    adir = tmp_path / "adir"
    adir.mkdir()
    result = score(good, adir)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: cannot write {adir}: it is a directory"
    assert str(good) not in result.stderr and ".scores" not in result.stderr
    assert list(adir.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["adir", "good.jsonl"]


@pytest.mark.usefixtures("umask")
def test_the_output_mode_is_what_open_would_give(tmp_path: Path, good: Path) -> None:
    os.umask(0o027)
    new = tmp_path / "new.jsonl"
    assert score(good, new).exit_code == 0
    assert stat.S_IMODE(new.stat().st_mode) == 0o640  # 0666 & ~umask, not mkstemp's 0600
    os.umask(0o077)
    existing = tmp_path / "existing.jsonl"
    existing.write_text("old\n")
    existing.chmod(0o664)
    assert score(good, existing).exit_code == 0
    assert existing.read_text() == SCORES and stat.S_IMODE(existing.stat().st_mode) == 0o664  # its mode kept


def test_a_failed_write_leaves_the_old_output_and_no_temp(tmp_path: Path, good: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")

    def fail(self: StubClassifier, prompts: Sequence[str], drafts: object = None) -> list[float]:
        return [0.25] * (len(prompts) - 1)  # one score short: the write fails midway

    monkeypatch.setattr(StubClassifier, "score", fail)
    with pytest.raises(ValueError):
        CliRunner().invoke(app, ["router", "score", "--input", str(good), "--output", str(out)],
                           catch_exceptions=False)
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl", "out.jsonl"]


def test_ids_must_be_strings_or_numbers_and_unique(tmp_path: Path, good: Path) -> None:
    ok = '{"id": "a", "prompt": "p"}\n'
    cases = {ok + '{"id": null, "prompt": "p"}\n': "line 2: \"id\" must be a string or a number",
             ok + '{"id": true, "prompt": "p"}\n': "line 2: \"id\" must be a string or a number",
             '{"id": false, "prompt": "p"}\n': "line 1: \"id\" must be a string or a number",
             ok + '{"id": {"k": 1}, "prompt": "p"}\n': "line 2: \"id\" must be a string or a number",
             ok + '{"id": [1], "prompt": "p"}\n': "line 2: \"id\" must be a string or a number",
             ok + '{"id": 1e400, "prompt": "p"}\n': "line 2: \"id\" must be a finite number",
             ok + '{"id": "b", "prompt": "p"}\n\n{"id": "a", "prompt": "q"}\n':
                 "line 4: duplicate id \"a\" (first on line 1)",
             '{"id": 1, "prompt": "p"}\n{"id": 1.0, "prompt": "q"}\n': "line 2: duplicate id 1.0 (first on line 1)"}
    src = tmp_path / "in.jsonl"
    for text, message in cases.items():
        src.write_text(text)
        with pytest.raises(ScoreInputError) as info:
            read_requests(src)
        assert str(info.value) == message
    src.write_text(ok + '{"id": "a", "prompt": "again"}\n')
    result = score(src, tmp_path / "out.jsonl")
    assert result.exit_code == 2 and not (tmp_path / "out.jsonl").exists()
    assert result.stderr.strip() == f"error: {src}: line 2: duplicate id \"a\" (first on line 1)"


def test_blank_lines_are_not_requests(tmp_path: Path) -> None:
    """Documented: blank lines (a trailing newline, a gap) are skipped; every other line is one output line,
    in order, and ids are unique, so scores join back by id."""
    src = tmp_path / "in.jsonl"
    src.write_text('\n{"id": "a", "prompt": "p"}\n  \t\r\n{"id": 2, "prompt": "q"}\n\n')
    assert [r["id"] for r in read_requests(src)] == ["a", 2]
    result = score(src, tmp_path / "out.jsonl")
    assert result.exit_code == 0
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["a", 2]


STUBBED_CLI = """
import sys
from router.classifier import DifficultyClassifier
DifficultyClassifier.load = classmethod(lambda cls, path=None: cls.__new__(cls))
DifficultyClassifier.score = lambda self, prompts, drafts=None: [0.25] * len(prompts)
from gateway.cli import app
app(sys.argv[1:])
"""


def test_dev_stdout_carries_only_the_scores(tmp_path: Path, good: Path) -> None:
    """A pipe on stdout: the scores stream into it; the summary goes to stderr, not into the JSONL."""
    result = subprocess.run([sys.executable, "-c", STUBBED_CLI, "router", "score", "--input", str(good),
                             "--output", "/dev/stdout"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SCORES and "scored 2 prompt(s)" in result.stderr
    assert Path("/dev/stdout").is_symlink()
    appended = tmp_path / "appended.jsonl"
    appended.write_text('{"id": "earlier", "p_hosted": 0.5}\n')
    with appended.open("a") as stdout:  # `>> appended.jsonl`: /dev/stdout is a regular file, opened to append
        result = subprocess.run([sys.executable, "-c", STUBBED_CLI, "router", "score", "--input", str(good),
                                 "--output", "/dev/stdout"], stdout=stdout, stderr=subprocess.PIPE, text=True,
                                timeout=120)
    assert result.returncode == 0, result.stderr
    assert appended.read_text() == '{"id": "earlier", "p_hosted": 0.5}\n' + SCORES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["appended.jsonl", "good.jsonl"]

"""`draftgate demo` end to end in a subprocess: bundled local model, simulated provider, report, URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ledger import Database
from ledger.reports import Reporter, ReportQuery


def test_demo_sends_a_mixed_workload_and_prints_the_report(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "220"}
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--requests", "16", "--no-keep-serving",
                             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=240, env=env,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "SIMULATED provider" in out
    assert "draftgate costs by route" in out and "draftgate costs by team" in out
    assert "savings vs all-hosted:" in out
    assert "/dashboard" not in out and "demo --keep-serving" in out  # no link to a gateway that has stopped
    db = Database(f"sqlite:///{tmp_path / 'ledger.db'}")
    total = Reporter(db).report(ReportQuery(group_by="route")).total.as_dict()
    db.dispose()
    assert total["requests"] == 16 and total["errors"] == 0
    assert total["local_requests"] > 0 and total["hosted_requests"] + total["escalated_requests"] > 0
    assert total["savings_usd"] > 0 and f"${total['savings_usd']:.6f}" in out


def test_demo_with_stdin_closed_ends_after_the_report(tmp_path: Path) -> None:
    """A closed stdin (fd 0 not open: Python's sys.stdin is None), as some CI runners and service managers
    start commands: no one can press Ctrl-C, so the tour ends after its report, without a traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "220"}
    command = [sys.executable, "-m", "gateway.cli", "demo", "--requests", "2", "--data-dir", str(tmp_path)]
    result = subprocess.run(["sh", "-c", 'exec "$@" 0<&-', "sh", *command], capture_output=True, text=True,
                            timeout=240, env=env)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "savings vs all-hosted:" in result.stdout and "serving until Ctrl-C" not in result.stdout


def test_a_second_tour_in_the_same_data_dir_reports_only_its_own_requests(tmp_path: Path) -> None:
    """The report covered every row in the ledger and waited only until it held `--requests` rows in all: a
    second tour showed the first one's requests plus whichever of its own had been flushed."""
    import re

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "220"}
    command = [sys.executable, "-m", "gateway.cli", "demo", "--requests", "3", "--no-keep-serving",
               "--data-dir", str(tmp_path)]
    for run in range(2):
        result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr[-3000:]
        totals = re.findall(r"^│ total\s+│\s+(\d+) │", result.stdout, re.MULTILINE)
        assert totals == ["3", "3"], (run, result.stdout[-3000:])  # by route and by team: this tour's 3
    db = Database(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert db.count_records() == 6
    db.dispose()


def test_demo_keep_serving_prints_a_dashboard_that_answers_until_ctrl_c(tmp_path: Path) -> None:
    import re
    import signal

    import httpx

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "220"}
    command = [sys.executable, "-m", "gateway.cli", "demo", "--requests", "2", "--keep-serving",
               "--data-dir", str(tmp_path)]
    errors = (tmp_path / "stderr.txt").open("w")  # a file, not a pipe nobody reads, which could fill and block it
    # Ctrl-C as at a terminal: a test run started in the background (a CI runner, `cmd &`) ignores SIGINT, a
    # disposition the child would inherit and keep (Python installs its handler only over the default one).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env,
                               stdin=subprocess.DEVNULL,  # pytest's timeout bounds the loop below
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:  # bounded: the tour of 2 requests ends, or the process does
            lines.append(line)
            if "serving until Ctrl-C" in line:
                break
        url = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/dashboard)", "".join(lines))
        assert url is not None, "".join(lines)[-3000:] + (tmp_path / "stderr.txt").read_text()[-3000:]
        assert httpx.get(url.group(1), timeout=10).status_code == 200  # the sign-in page of a live gateway
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        errors.close()

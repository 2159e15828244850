"""The dependency audit must fail on a known-vulnerable pin, with or without a live vulnerability service."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("offline_audit", ROOT / "scripts" / "offline_audit.py")
assert _spec and _spec.loader
offline_audit = importlib.util.module_from_spec(_spec)
sys.modules["offline_audit"] = offline_audit  # dataclasses look their module up while the class is built
_spec.loader.exec_module(offline_audit)

# requests < 2.3.0 leaks netrc credentials on redirect (PYSEC-2014-13, CVE-2014-1829).
VULNERABLE_PIN = "requests==2.2.0"
FAKE_HASH = "--hash=sha256:" + "0" * 64


def _advisory(*events: dict[str, str], versions: tuple[str, ...] = ()) -> dict:
    return {"id": "PYSEC-TEST", "ranges": [list(events)], "versions": list(versions)}


@pytest.mark.parametrize(
    ("version", "expected"),
    [("0.9", False), ("1.0", True), ("1.4.9", True), ("1.5", False), ("2.0", True), ("2.1", True), ("2.2", False)],
)
def test_ecosystem_ranges(version: str, expected: bool) -> None:
    advisory = _advisory({"introduced": "1.0"}, {"fixed": "1.5"}, {"introduced": "2.0"}, {"last_affected": "2.1"})
    assert offline_audit.is_affected(version, advisory) is expected


def test_explicit_versions_list_counts_even_without_a_range() -> None:
    advisory = {"id": "PYSEC-TEST", "ranges": [], "versions": ["3.1.4"]}
    assert offline_audit.is_affected("3.1.4", advisory)
    assert not offline_audit.is_affected("3.1.5", advisory)


def test_committed_snapshot_flags_a_known_vulnerability_and_passes_a_fixed_release() -> None:
    snapshot = offline_audit.load_snapshot(offline_audit.DEFAULT_SNAPSHOT)
    found = offline_audit.check([("Requests", "2.2.0")], snapshot)  # names are matched canonicalised
    assert "PYSEC-2014-13" in {f.advisory for f in found}
    assert offline_audit.check([("requests", "2.32.3")], snapshot) == []


def test_lock_pins_are_read_through_hash_continuation_lines(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text(f"# comment\n{VULNERABLE_PIN} \\\n    {FAKE_HASH}\nuvicorn[standard]==0.30.0 ; python_version >= '3.9'\n")
    assert offline_audit.read_pins(lock) == [("requests", "2.2.0"), ("uvicorn", "0.30.0")]


def test_audit_script_fails_the_build_on_a_vulnerable_lock(tmp_path: Path) -> None:
    """scripts/audit.sh (what CI runs) exits 1 and names the advisory, whether or not PyPI's API answers."""
    if not (ROOT / ".venv" / "bin" / "activate").exists():
        pytest.fail("scripts/audit.sh needs the project's .venv (scripts/install.sh)")
    lock = tmp_path / "vulnerable.lock"
    lock.write_text(f"{VULNERABLE_PIN} \\\n    {FAKE_HASH}\n")
    env = {**os.environ, "AUDIT_LOCK": str(lock)}
    done = subprocess.run(["bash", "scripts/audit.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "PYSEC-2014-13" in output or "CVE-2014-1829" in output or "GHSA-cfj3-7x9c-4p3h" in output


def test_offline_audit_cli_exit_codes(tmp_path: Path) -> None:
    script = str(ROOT / "scripts" / "offline_audit.py")
    bad = subprocess.run([sys.executable, script, "check", "--pin", "not a pin"], capture_output=True, text=True)
    assert bad.returncode == 2 and "NAME==VERSION" in bad.stderr
    vulnerable = subprocess.run([sys.executable, script, "check", "--pin", VULNERABLE_PIN],
                                capture_output=True, text=True)
    assert vulnerable.returncode == 1 and "PYSEC-2014-13" in vulnerable.stdout
    assert "NOT known" in vulnerable.stdout  # the snapshot's age is always stated

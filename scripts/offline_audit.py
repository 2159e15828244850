#!/usr/bin/env python3
"""Audit pinned requirements against a committed snapshot of the PyPA advisory database.

pip-audit needs a live vulnerability service (PyPI's JSON API or OSV). Where neither can be reached
(this project's CI has only the package index), this is the fallback: the same advisories pip-audit's
PyPI service serves (PYSEC ids, OSV format) from https://github.com/pypa/advisory-database, matched
by the same rules (explicit `versions` lists, then ECOSYSTEM ranges). It can only know advisories
published before the snapshot's date, and says so on every run.

  python scripts/offline_audit.py build --repo PATH/TO/advisory-database/.git --out security/pypa-advisories.json.gz
  python scripts/offline_audit.py check -r requirements.lock [--pin torch==2.13.0]

Exit status of `check`: 0 no known vulnerability in the snapshot, 1 vulnerable pins found, 2 bad input.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

DEFAULT_SNAPSHOT = Path(__file__).resolve().parent.parent / "security" / "pypa-advisories.json.gz"
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;\\#]+)")


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    advisory: str
    aliases: tuple[str, ...]
    fixed_in: tuple[str, ...]


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _in_range(version: Version, events: list[dict[str, str]]) -> bool:
    """OSV ECOSYSTEM range semantics: sorted events open ([introduced) and close (fixed) / last_affected]."""
    affected = False
    for event in sorted(events, key=lambda e: _version(next(iter(e.values()))) or Version("0")):
        kind, raw = next(iter(event.items()))
        bound = Version("0") if raw == "0" else _version(raw)
        if bound is None:
            continue
        if kind == "introduced" and version >= bound:
            affected = True
        elif (kind == "fixed" and version >= bound) or (kind == "last_affected" and version > bound):
            affected = False
    return affected


def is_affected(version: str, advisory: dict) -> bool:
    """True when VERSION is listed in the advisory or falls inside one of its ECOSYSTEM ranges."""
    if version in advisory.get("versions", ()):
        return True
    parsed = _version(version)
    if parsed is None:
        return False
    return any(_in_range(parsed, events) for events in advisory.get("ranges", ()))


def read_pins(path: Path) -> list[tuple[str, str]]:
    """`name==version` pins of a requirements or lock file (hash continuation lines are skipped)."""
    pins = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            pins.append((match.group(1), match.group(2)))
    return pins


def check(pins: list[tuple[str, str]], snapshot: dict) -> list[Finding]:
    findings = []
    advisories = snapshot["advisories"]
    for name, version in pins:
        for advisory in advisories.get(canonicalize_name(name), ()):
            if is_affected(version, advisory):
                findings.append(Finding(name, version, advisory["id"], tuple(advisory.get("aliases", ())),
                                        tuple(advisory.get("fixed", ()))))
    return findings


def load_snapshot(path: Path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def build(repo: Path, out: Path) -> None:
    """Compacts every PyPI advisory of a pypa/advisory-database git repository at HEAD into one file."""
    import yaml  # only the maintainer's build step needs it

    def git(*args: str) -> str:
        return subprocess.run(["git", "--git-dir", str(repo), *args], check=True, capture_output=True,
                              text=True).stdout

    commit, date = git("log", "-1", "--format=%H %cI").split()
    advisories: dict[str, list[dict]] = {}
    paths = [p for p in git("ls-tree", "-r", "--name-only", "HEAD", "vulns").splitlines() if p.endswith(".yaml")]
    for path in paths:
        doc = yaml.safe_load(git("show", f"HEAD:{path}"))
        if doc.get("withdrawn"):
            continue
        for affected in doc.get("affected", ()):
            package = affected.get("package", {})
            if package.get("ecosystem") != "PyPI":
                continue
            ranges = [r["events"] for r in affected.get("ranges", ()) if r.get("type") == "ECOSYSTEM"]
            fixed = sorted({e["fixed"] for events in ranges for e in events if "fixed" in e})
            advisories.setdefault(canonicalize_name(package["name"]), []).append({
                "id": doc["id"], "aliases": doc.get("aliases", []), "ranges": ranges,
                "versions": affected.get("versions", []), "fixed": fixed,
            })
    snapshot = {"source": "https://github.com/pypa/advisory-database", "commit": commit, "date": date,
                "license": "CC-BY-4.0 (Python Packaging Advisory Database contributors)",
                "advisories": dict(sorted(advisories.items()))}
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(out, "wb", mtime=0) as f:  # mtime=0: rebuilding the same commit gives the same bytes
        f.write(json.dumps(snapshot, separators=(",", ":"), sort_keys=True).encode())
    print(f"{out}: {sum(map(len, advisories.values()))} advisories for {len(advisories)} packages, "
          f"pypa/advisory-database {commit[:12]} ({date})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--repo", type=Path, required=True, help="git directory of pypa/advisory-database")
    b.add_argument("--out", type=Path, default=DEFAULT_SNAPSHOT)
    c = sub.add_parser("check")
    c.add_argument("-r", "--requirement", type=Path, action="append", default=[])
    c.add_argument("--pin", action="append", default=[], help="an extra NAME==VERSION to check")
    c.add_argument("--snapshot", type=Path, default=DEFAULT_SNAPSHOT)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.repo, args.out)
        return 0
    try:
        snapshot = load_snapshot(args.snapshot)
        pins = [pin for path in args.requirement for pin in read_pins(path)]
    except (OSError, ValueError) as e:
        print(f"offline audit: cannot read input: {e}", file=sys.stderr)
        return 2
    for extra in args.pin:
        match = _PIN.match(extra)
        if not match:
            print(f"offline audit: --pin {extra!r} is not NAME==VERSION", file=sys.stderr)
            return 2
        pins.append((match.group(1), match.group(2)))
    if not pins:
        print("offline audit: no NAME==VERSION pins found", file=sys.stderr)
        return 2
    findings = check(pins, snapshot)
    print(f"offline audit: {len(pins)} pins against the PyPA advisory database snapshot of "
          f"{snapshot['date'][:10]} (commit {snapshot['commit'][:12]}); advisories published later are "
          f"NOT known to it")
    for f in findings:
        aliases = ", ".join(f.aliases[:3])
        fixed = ", ".join(f.fixed_in) or "no fix"
        print(f"  VULNERABLE {f.package}=={f.version}: {f.advisory} ({aliases}); fixed in {fixed}")
    if findings:
        print(f"offline audit: {len(findings)} known vulnerabilities", file=sys.stderr)
        return 1
    print("offline audit: no known vulnerabilities in the snapshot")
    return 0


if __name__ == "__main__":
    sys.exit(main())

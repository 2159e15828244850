"""The configs a new user copies pass `draftgate check-config`: the shipped default, README's `draftgate.yaml`, and
every other YAML block in README.md and docs/, each a section of that file (merged into it, as a user adds it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# What README's draftgate.yaml reads from the environment (os.environ/NAME), set as a user would set it.
ENV = {"DRAFTGATE_MASTER_KEY": "sk-master-0123456789", "OPENAI_API_KEY": "sk-openai-test",
       "ANTHROPIC_API_KEY": "sk-ant-test", "CI_BOT_KEY": "sk-ci-bot-0123456789"}


def _yaml_blocks() -> list[tuple[str, str]]:
    """(file:line, text) of every ```yaml block in the docs, in order."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in re.finditer(r"^```yaml\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
            found.append((f"{doc.relative_to(REPO)}:{text[:match.start()].count(chr(10)) + 1}", match.group(1)))
    return found


def _check(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DRAFTGATE_") and k not in ENV
             and k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", path.name], cwd=path.parent,
                          env={**clean, **env, "PYTHONPATH": str(REPO), "DRAFTGATE_DATA_DIR": str(path.parent)},
                          capture_output=True, text=True, timeout=120)


def _full_config() -> str:
    """README's `draftgate.yaml`: the first YAML block, the one with `models` and `policies`."""
    where, text = _yaml_blocks()[0]
    assert {"models", "local", "policies"} <= set(yaml.safe_load(text)), where
    return text


def test_the_shipped_default_config_passes(tmp_path: Path) -> None:
    path = tmp_path / "default.yaml"
    path.write_text((REPO / "policies" / "default.yaml").read_text())
    result = _check(path, {})
    assert result.returncode == 0, result.stderr


def test_readmes_config_passes_and_names_a_missing_key_as_the_readme_says(tmp_path: Path) -> None:
    path = tmp_path / "draftgate.yaml"
    path.write_text(_full_config())
    result = _check(path, ENV)
    assert result.returncode == 0, result.stderr
    # README: "prints every problem with its file, line and field path (`draftgate.yaml:7: ...` for the file above)"
    promised = re.findall(r"`(draftgate\.yaml:\d+: [^`]+)`", (REPO / "README.md").read_text())
    assert promised, "README no longer quotes check-config's output"
    missing = _check(path, {k: v for k, v in ENV.items() if k != "OPENAI_API_KEY"})
    assert missing.returncode == 2
    for line in promised:
        assert " ".join(line.split()) in missing.stderr, (line, missing.stderr)


@pytest.mark.parametrize("where,text", _yaml_blocks()[1:], ids=[w for w, _ in _yaml_blocks()[1:]])
def test_each_yaml_block_of_the_docs_passes_as_a_section_of_readmes_config(tmp_path: Path, where: str,
                                                                          text: str) -> None:
    full: dict[str, Any] = yaml.safe_load(_full_config())
    section = yaml.safe_load(text)
    assert isinstance(section, dict), where
    path = tmp_path / "draftgate.yaml"
    path.write_text(yaml.safe_dump({**full, **section}, sort_keys=False))
    result = _check(path, ENV)
    assert result.returncode == 0, (where, result.stderr)

"""Dependencies point inward: the layering in DEVELOPERS.md, checked on every import statement."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "router", "policies", "ledger", "local_engine")
ALLOWED = {
    "gateway": {"router", "policies", "ledger", "local_engine"},
    "router": {"policies", "ledger", "local_engine"},
    "policies": set(),
    "ledger": set(),
    "local_engine": set(),
}
HEAVY = {"torch": {"local_engine"}, "transformers": {"local_engine"}, "fastapi": {"gateway"},
         "uvicorn": {"gateway"}, "litellm": {"router"}}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_inward(package: str) -> None:
    files = list((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no modules"
    bad = []
    for path in files:
        for name in imported_modules(path):
            if name in PACKAGES and name != package and name not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
            if name in HEAVY and package not in HEAVY[name] and "training" not in path.parts:
                bad.append(f"{path.relative_to(ROOT)} imports heavy dependency {name}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_violations(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import gateway.app\nfrom router import Planner\nimportlib.import_module('litellm')\n")
    assert imported_modules(sample) == {"gateway", "router", "litellm"}

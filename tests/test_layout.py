"""The house's import rule (README, "Architecture"): imports flow one way between packages."""

from __future__ import annotations

import ast
from pathlib import Path

import tokenfleet

ROOT = Path(tokenfleet.__file__).parent
SHARED = {"errors", "atomic", "tomlfile", "__init__"}  # tokenfleet's own helpers
# package -> the packages it may import (besides itself and SHARED).
ALLOWED = {
    "models": set(),
    "hardware": set(),
    "traces": set(),
    "perf": {"models", "hardware"},
    "calibrate": {"perf", "models", "hardware", "traces"},
    "replay": {"perf", "models", "hardware", "traces"},
    "study": {"replay", "calibrate", "perf", "models", "hardware", "traces"},
    "report": {"study", "replay", "perf", "models", "hardware", "traces"},
    "cli": {"models", "hardware", "traces", "perf", "calibrate", "replay", "study", "report"},
}


def package_of(module: str) -> str:
    """'tokenfleet.replay.records.timeline' -> 'replay'; 'tokenfleet.errors' -> 'errors'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    """Every tokenfleet module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(n for n in names if n == "tokenfleet" or n.startswith("tokenfleet."))
    return found


def test_imports_flow_one_way():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        own = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        own = "cli" if own == "__main__" else own  # `python -m tokenfleet` runs the CLI
        for module in imports_of(path):
            target = package_of(module)
            if target == own or target in SHARED:
                continue
            if own in SHARED or target not in ALLOWED[own]:
                wrong.append(f"{relative} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_rule_names_every_package():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED)

"""The dependency rule of DESIGN.md: ``hw_sim`` imports neither ``sbnn`` nor ``export``; ``export`` may use
``hw_sim`` and ``sbnn``'s models; within ``sbnn`` only the command line (``sbnn.cli`` and the pipeline it
runs, ``sbnn.pipeline``) imports ``export``.  Checked on every import statement, function-level ones too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND_LINE = {"sbnn.cli", "sbnn.pipeline", "sbnn.__main__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
    return names


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package, forbidden", [("hw_sim", ("sbnn", "export")), ("export", ("sbnn",))])
def test_lower_layers_do_not_import_upper_ones(package, forbidden):
    allowed_from_sbnn = {"sbnn.models", "sbnn.layers", "sbnn.estimators"} if package == "export" else set()
    for path in _sources(package):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in forbidden or name in allowed_from_sbnn, f"{path.relative_to(ROOT)} imports {name}"


def test_only_the_command_line_imports_export():
    for path in _sources("sbnn"):
        if _module_name(path) in COMMAND_LINE:
            continue
        for name in _imports(path):
            assert name.split(".")[0] != "export", f"{path.relative_to(ROOT)} imports {name}"


def test_the_rule_is_checked_on_real_imports():
    # The checker sees both module-level and function-level imports, relative ones resolved.
    assert "export.folder" in _imports(ROOT / "sbnn" / "cli.py")
    assert {"hw_sim.arith", "hw_sim.network"} <= _imports(ROOT / "hw_sim" / "loihi.py")

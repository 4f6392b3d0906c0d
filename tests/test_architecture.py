"""The dependency rule: ``safeio`` (atomic writes, locks, hostile-file guards) imports none of the three;
``hw_sim`` imports neither ``sbnn`` nor ``export``; ``export`` may use
``hw_sim`` and ``sbnn``'s models; within ``sbnn`` only the command line (``sbnn.cli.*`` and the pipeline it
runs, ``sbnn.pipeline``) imports ``export``.  Checked on every import statement, function-level ones too.

And the repository stands alone: code, tests, examples and the README cite the documents in ``docs/``,
never ones kept outside the repository, and every ``docs/<name>.md#<anchor>`` they cite exists."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from conftest import ROOT

# sbnn.backends: the simulation backends of `sbnn simulate` (its torch backend reads model.nir via export).
# sbnn.export_evaluation: the pipeline's evaluate stage (it reads and runs export folders via export).
COMMAND_LINE = {"sbnn.cli", "sbnn.pipeline", "sbnn.__main__", "sbnn.backends", "sbnn.export_evaluation"}


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


@pytest.mark.parametrize("package, forbidden", [("hw_sim", ("sbnn", "export")), ("export", ("sbnn",)),
                                                ("safeio", ("sbnn", "export", "hw_sim"))])
def test_lower_layers_do_not_import_upper_ones(package, forbidden):
    allowed_from_sbnn = {"sbnn.models", "sbnn.layers", "sbnn.estimators"} if package == "export" else set()
    for path in _sources(package):
        for name in _imports(path):
            top = name.split(".")[0]
            allowed = name in allowed_from_sbnn or name.startswith("sbnn.layers.") and "sbnn.layers" in allowed_from_sbnn
            assert top not in forbidden or allowed, f"{path.relative_to(ROOT)} imports {name}"


def _is_command_line(module: str) -> bool:
    return module in COMMAND_LINE or module.startswith("sbnn.cli.")


def test_only_the_command_line_imports_export():
    for path in _sources("sbnn"):
        if _is_command_line(_module_name(path)):
            continue
        for name in _imports(path):
            assert name.split(".")[0] != "export", f"{path.relative_to(ROOT)} imports {name}"


def test_the_rule_is_checked_on_real_imports():
    # The checker sees both module-level and function-level imports, relative ones resolved.
    assert "export.folder" in _imports(ROOT / "sbnn" / "cli" / "export.py")
    assert "sbnn.pipeline" in _imports(ROOT / "sbnn" / "cli" / "export.py")
    assert _is_command_line("sbnn.cli") and _is_command_line("sbnn.cli.import_") and not _is_command_line("sbnn.cli_x")
    assert {"hw_sim.arith", "hw_sim.network"} <= _imports(ROOT / "hw_sim" / "loihi.py")


# --------------------------------------------------------------------------------------------------
# The repository stands alone

# Written so that this file does not name them itself.
OUTSIDE_DOCUMENTS = tuple(f"{stem}.md" for stem in ("LOIHI", "METHOD", "DATA", "DESIGN"))
OUTSIDE_FOLDER = "../" + "shared"
STANDALONE_FOLDERS = ("sbnn", "export", "hw_sim", "tests", "benchmarks", "examples")
STANDALONE_FILES = ("README.md",)
_OUTSIDE_CITATION = re.compile(
    "|".join([rf"(?<![A-Za-z0-9_]){re.escape(name)}" for name in OUTSIDE_DOCUMENTS] + [re.escape(OUTSIDE_FOLDER)])
)
_DOCS_CITATION = re.compile(r"\bdocs/([A-Za-z0-9_.-]+?\.md)(?:#([A-Za-z0-9_-]+))?")
# A relative link inside docs/: [text](name.md#anchor).
_RELATIVE_LINK = re.compile(r"\]\(([A-Za-z0-9_.-]+?\.md)(?:#([A-Za-z0-9_-]+))?\)")
_SKIPPED = {".git", ".venv", ".venv-lava", ".pytest_cache", ".hypothesis", ".cache", "__pycache__", "runs",
            "build"}


def _files_under(folder: Path) -> list[Path]:
    """The files under ``folder``, without virtual environments, caches and run folders (not walked)."""
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = sorted(d for d in subdirectories if d not in _SKIPPED and not d.endswith(".egg-info"))
        found += [Path(directory) / name for name in sorted(files)]
    return found


def _text(path: Path) -> str:
    # Binary files (examples/netx/*.h5, report.png) are searched too: a citation there would show as text.
    return path.read_bytes().decode("utf-8", errors="replace")


def _anchors(document: Path) -> set[str]:
    """Explicit ``<a id="...">`` anchors and GitHub's anchors of the headings."""
    text = document.read_text(encoding="utf-8")
    anchors = set(re.findall(r"""\bid=["']([^"']+)["']""", text))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_no_citation_of_documents_outside_the_repository():
    paths = [path for folder in STANDALONE_FOLDERS for path in _files_under(ROOT / folder)]
    paths += [ROOT / name for name in STANDALONE_FILES]
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}"
        for path in paths
        for number, line in enumerate(_text(path).splitlines(), start=1)
        if _OUTSIDE_CITATION.search(line)
    ]
    assert not offenders, "cite docs/ (in the repository) instead:\n" + "\n".join(offenders)


def test_every_cited_docs_page_and_anchor_exists():
    cited: dict[tuple[str, str | None], str] = {}
    for path in _files_under(ROOT):
        text = _text(path)
        citations = _DOCS_CITATION.findall(text)
        if path.parent == ROOT / "docs" and path.suffix == ".md":
            citations += _RELATIVE_LINK.findall(text)
        for name, anchor in citations:
            cited.setdefault((name, anchor or None), str(path.relative_to(ROOT)))
    assert ("method.md", "agr") in cited, "the scan found no citations: the pattern is broken"
    problems = []
    anchors: dict[str, set[str]] = {}
    for (name, anchor), where in sorted(cited.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        document = ROOT / "docs" / name
        if not document.is_file():
            problems.append(f"{where} cites docs/{name}, which does not exist")
        elif anchor is not None and anchor not in anchors.setdefault(name, _anchors(document)):
            problems.append(f"{where} cites docs/{name}#{anchor}, which has no such anchor")
    assert not problems, "\n".join(problems)


def test_the_citation_checks_see_what_they_look_for(tmp_path):
    assert _OUTSIDE_CITATION.search("see " + OUTSIDE_FOLDER + "/x.md")
    assert all(_OUTSIDE_CITATION.search(f"({name} §2)") for name in OUTSIDE_DOCUMENTS)
    # (A longer name that ends in one of them is not a citation; split so that a grep does not flag it.)
    assert not _OUTSIDE_CITATION.search("docs/method.md#agr, docs/data.md, docs/LIMITS.md, METADATA" + ".md")
    assert _DOCS_CITATION.findall("(docs/method.md#aux-loss, docs/loihi.md)") == [("method.md", "aux-loss"),
                                                                                 ("loihi.md", "")]
    page = tmp_path / "page.md"
    page.write_text('# Title\n<a id="agr"></a>\n## 2. The estimator family\n## Lava on Python 3.11\n')
    assert _anchors(page) == {"title", "agr", "2-the-estimator-family", "lava-on-python-311"}


"""Run the unmodified lava-nc 0.10.0 wheel on Python 3.11 (docs/loihi.md#lava-on-python-311).

Python 3.11 rejects a dataclass field whose default is an instance of an unhashable class. lava-nc 0.10.0
has such defaults (``ByteEncoder()``) in exactly one module, ``lava.magma.compiler.var_model``. Instead of
editing the installed package, :func:`install` puts an import hook in front of ``sys.meta_path`` that
rewrites, while that one module is loaded, every ``field: T = X()`` inside a ``@dataclass`` class into
``field: T = dataclasses.field(default_factory=X)``. Every other module loads untouched.

Call :func:`install` before the first ``import lava``. Lava forks its worker processes, so they inherit the
patched module. The hook is idempotent and a no-op below Python 3.11; if upstream fixes the file, the
rewrite finds nothing to change.
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import sys

PATCHED_MODULE = "lava.magma.compiler.var_model"
# Must not start with a double underscore: Python would mangle it inside class bodies.
_DATACLASSES_ALIAS = "_lava_compat_dataclasses"


def _is_dataclass_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Name):
        return target.id == "dataclass"
    return isinstance(target, ast.Attribute) and target.attr == "dataclass"


class _DefaultFactoryRewriter(ast.NodeTransformer):
    """Turns call-valued dataclass defaults ``X()`` into ``field(default_factory=X)``."""

    def __init__(self) -> None:
        self.rewrites = 0

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        self.generic_visit(node)
        if not any(_is_dataclass_decorator(d) for d in node.decorator_list):
            return node
        for statement in node.body:
            value = statement.value if isinstance(statement, ast.AnnAssign) else None
            if isinstance(value, ast.Call) and not value.args and not value.keywords:
                statement.value = ast.Call(
                    func=ast.Attribute(ast.Name(_DATACLASSES_ALIAS, ast.Load()), "field", ast.Load()),
                    args=[],
                    keywords=[ast.keyword("default_factory", value.func)],
                )
                self.rewrites += 1
        return node


def patched_source_ast(source: bytes, filename: str) -> ast.Module:
    """The module's AST with unhashable dataclass defaults rewritten to default factories."""
    tree = ast.parse(source, filename)
    _DefaultFactoryRewriter().visit(tree)
    insert_at = 0
    for index, statement in enumerate(tree.body):
        is_docstring = (index == 0 and isinstance(statement, ast.Expr)
                        and isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str))
        is_future = isinstance(statement, ast.ImportFrom) and statement.module == "__future__"
        if is_docstring or is_future:
            insert_at = index + 1
    tree.body.insert(insert_at, ast.Import(names=[ast.alias("dataclasses", _DATACLASSES_ALIAS)]))
    return ast.fix_missing_locations(tree)


class _PatchingLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname: str):  # bypasses the byte-code cache so the rewrite always runs
        source = self.get_data(self.path)
        return compile(patched_source_ast(source, self.path), self.path, "exec", dont_inherit=True)


class _LavaCompatFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != PATCHED_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None:
            return None
        spec.loader = _PatchingLoader(fullname, spec.origin)
        return spec


def install() -> None:
    """Insert the import hook (once). Must run before ``import lava``; harmless if called again."""
    if sys.version_info < (3, 11):
        return
    if any(isinstance(finder, _LavaCompatFinder) for finder in sys.meta_path):
        return
    if PATCHED_MODULE in sys.modules:
        raise RuntimeError(f"{PATCHED_MODULE} was imported before hw_sim.lava_compat.install()")
    sys.meta_path.insert(0, _LavaCompatFinder())

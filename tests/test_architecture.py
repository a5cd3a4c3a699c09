"""The limits that keep the code readable (issue: one stage protocol, packages that
show the architecture): module and function sizes, no private names imported across
modules, a small top level, and a layering without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = sorted((ROOT / "retrodb").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py"))
# lower layers never import higher ones
LAYERS = ["core", "exec", "stores", "stages", "query", "training", "ops"]


def _tree(p: Path) -> ast.Module:
    return ast.parse(p.read_text(encoding="utf-8"))


def test_modules_and_functions_are_small():
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in CODE
           if (n := len(p.read_text().splitlines())) > 450]
    assert not big, big
    long = []
    for p in CODE:
        for node in ast.walk(_tree(p)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name}: {n}")
    assert not long, long


def test_no_private_names_imported_across_modules():
    bad = []
    for p in CODE:
        for node in ast.walk(_tree(p)):
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.name.startswith("_") and a.name != "__version__":
                        bad.append(f"{p.relative_to(ROOT)}: from {node.module} import "
                                   f"{a.name}")
    assert not bad, bad


def test_a_small_top_level():
    top = [p for p in (ROOT / "retrodb").iterdir()
           if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())]
    assert len(top) <= 12, sorted(p.name for p in top)


def test_layers_only_import_downwards():
    bad = []
    for p in sorted((ROOT / "retrodb").rglob("*.py")):
        rel = p.relative_to(ROOT / "retrodb").parts
        if len(rel) < 2:
            continue
        mine = LAYERS.index(rel[0])
        for node in ast.walk(_tree(p)):
            if isinstance(node, ast.ImportFrom) and node.level:
                # resolve the relative import to a top-level package of retrodb
                base = list(rel[:-1])[: len(rel) - node.level]
                target = (base + (node.module or "").split("."))[0] if base else \
                    (node.module or "").split(".")[0]
                if target in LAYERS and LAYERS.index(target) > mine:
                    bad.append(f"{'/'.join(rel)} imports {target}")
    assert not bad, bad

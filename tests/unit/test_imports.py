"""The import shape of the package (STYLE.md: data flows one way; search/ and eval/ need no torch).

Checked on the source with an AST walk (top-level imports and the lazy ones inside functions), and
once at run time in a fresh interpreter. ``python -m tests.unit.test_imports`` prints the package
graph the README's Development section shows, from the same walk.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "adaretrieve"

# the read side: works on numpy arrays and index files, never on the writer, the encoder or training
READ_SIDE = ("adaretrieve.search", "adaretrieve.eval")
WRITE_SIDE = ("adaretrieve.index.writer", "adaretrieve.index.build", "adaretrieve.modeling", "adaretrieve.training")
# private names still imported across modules, each with the work that removes it
KNOWN_PRIVATE = {("adaretrieve.training.smae", "adaretrieve.training.trainer", "_dist")}  # issue 23, training part


class Import(NamedTuple):
    importer: str  # dotted module name of the file that imports
    module: str  # the module imported (a submodule when ``from package import submodule``)
    name: str | None  # the name taken from it (``from module import name``), None for ``import module``
    lazy: bool  # inside a function: runs on first call, not on import
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    p = ROOT.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports(path: Path) -> list[Import]:
    """Every import statement of ``path`` that names an adaretrieve module."""
    me = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    lazy_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f) if n is not f}
    out = []
    for node in ast.walk(tree):
        lazy = id(node) in lazy_nodes
        if isinstance(node, ast.Import):
            out += [Import(me, a.name, None, lazy, node.lineno) for a in node.names if a.name.split(".")[0] == "adaretrieve"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package
                pkg = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "adaretrieve":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append(Import(me, sub, None, lazy, node.lineno) if is_module(sub)
                           else Import(me, base, a.name, lazy, node.lineno))
    return out


def all_imports() -> list[Import]:
    return [i for p in sorted(PKG.rglob("*.py")) for i in imports(p)]


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_read_side_loads_no_torch_and_no_writer():
    """In a fresh interpreter: importing search and eval pulls in neither torch nor the write side."""
    code = ("import sys\n"
            "import adaretrieve.search, adaretrieve.search.reader, adaretrieve.eval, adaretrieve.eval.measures\n"
            f"bad = {WRITE_SIDE!r}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'"
            " or any(m == b or m.startswith(b + '.') for b in bad)))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", f"importing search / eval loaded {res.stdout.strip()}"


def test_no_module_imports_a_private_name_from_another():
    """``from adaretrieve.x import _y`` reaches into x's internals: make _y public, or move it."""
    found = {(i.importer, i.module, i.name): i.line for i in all_imports()
             if i.name and i.name.startswith("_") and i.name != "__version__" and i.module != i.importer}
    bad = [f"{imp} (line {line}) imports {mod}.{name}" for (imp, mod, name), line in sorted(found.items())
           if (imp, mod, name) not in KNOWN_PRIVATE]
    assert not bad, "\n".join(bad)


def test_search_and_eval_import_nothing_from_the_write_side():
    """search/ and eval/ take vectors and index files only; eval sits below search (it scores runs,
    whoever made them). Lazy imports count: they run on the first call."""
    bad = sorted({f"{i.importer} (line {i.line}) imports {i.module}" for i in all_imports()
                  if within(i.importer, READ_SIDE) and within(i.module, WRITE_SIDE)
                  or within(i.importer, ("adaretrieve.eval",)) and within(i.module, ("adaretrieve.search",))})
    assert not bad, "\n".join(bad)


def unit(module: str) -> str:
    """The unit a module belongs to in the package graph: its subpackage, or the top-level module."""
    parts = module.split(".")
    if len(parts) == 1:
        return "adaretrieve"
    return parts[1] + ("/" if (PKG / parts[1]).is_dir() else "")


def package_graph() -> list[str]:
    """One line per unit: what it imports at import time (->) and only inside functions (~>),
    with the modules used of a subpackage in parentheses, leaving out errors and _version (imported
    everywhere) and imports within the unit."""
    eager: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    lazy: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for i in all_imports():
        src, dst = unit(i.importer), unit(i.module)
        if src != dst and dst not in ("errors", "_version"):
            (lazy if i.lazy else eager)[src][dst].add(i.module.split(".")[2] if i.module.count(".") > 1 else "")

    def show(edges: dict[str, set[str]], skip=()) -> str:
        return ", ".join(d + (f"({', '.join(sorted(m for m in ms if m))})" if any(ms) and src != "cli/" else "")
                         for d, ms in sorted(edges.items()) if d not in skip)

    lines = []
    for src in sorted(set(eager) | set(lazy)):
        now, later = show(eager[src]), show(lazy[src], skip=eager[src])
        lines.append(f"{src:<12} " + "   ".join(([f"-> {now}"] if now else []) + ([f"~> {later}"] if later else [])))
    leaves = sorted({unit(module_name(p)) for p in PKG.rglob("*.py")} - set(eager) - set(lazy))
    return lines + [f"{'(leaves)':<12} {', '.join(leaves)}: import no other unit"]


def module_cycles() -> list[list[str]]:
    """Strongly connected components (more than one module) of the module import graph, lazy imports
    included (``from package import name`` counts as an import of the package's ``__init__``)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for i in all_imports():
        if i.module != i.importer:
            edges[i.importer].add(i.module)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(edges)):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_cycles_between_modules():
    """A cycle, even through a lazy import, means two modules are one unit in disguise."""
    assert module_cycles() == []


if __name__ == "__main__":
    print("\n".join(package_graph()))
    print("module cycles:", module_cycles() or "none")

"""Import cycles inside the package: ``python -m lightning_prune._check_imports`` (exit 1 when there is one).

Every ``import`` of a ``lightning_prune`` module counts, at module level and inside functions (a function-level
import that closes a cycle only hides it until the next refactor); imports under ``if TYPE_CHECKING:`` do not (they
never run). Importing a module from its own package's ``__init__`` is not a dependency of the package on itself.
The check reads the sources with :mod:`ast` and imports nothing.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "lightning_prune"


def module_files(root: Path | None = None) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of the package."""
    root = root or Path(__file__).resolve().parent
    out = {}
    for file in sorted(root.rglob("*.py")):
        parts = (PACKAGE, *file.relative_to(root).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = file
    return out


def _imported(node: ast.AST, modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith(PACKAGE):
        return {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names}
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.startswith(PACKAGE)}
    return set()


def imports_of(file: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``file`` imports (outside ``if TYPE_CHECKING:`` blocks)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        found.update(_imported(node, modules))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(file.read_text()))
    return {m for m in found if m in modules}


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    modules = modules or module_files()
    graph = {}
    for name, file in modules.items():
        # a package's own modules importing it (or it importing them) is how packages work, not a cycle
        graph[name] = {m for m in imports_of(file, modules) if m != name and not name.startswith(m + ".")}
        if file.name == "__init__.py":
            graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    return graph


def cycles(graph: dict[str, set[str]] | None = None) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    graph = graph if graph is not None else import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                connect(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def main() -> int:
    found = cycles()
    for component in found:
        print("import cycle: " + " <-> ".join(component))
    if not found:
        print(f"{PACKAGE}: no import cycles among {len(module_files())} modules")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())

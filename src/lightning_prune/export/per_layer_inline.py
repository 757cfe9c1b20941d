"""Inline the shared helpers a per-layer template imports, so the rendered modeling file stays standalone.

A template (``adapters/<family>/modeling_per_layer.py``) imports what it shares with the other families from
:mod:`lightning_prune.export.per_layer_shared`, with one plain ``from ... import`` statement, so it remains a module
the tests import. The exported ``modeling_lightning_prune.py`` must load without lightning-prune, so rendering puts
the definitions of the imported names there instead (with the definitions they use and the imports those need),
read from the helper module's source with :mod:`ast`: nothing is imported or executed. Any other import from
lightning_prune is refused: the rendered file could not load it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

SHARED_MODULE = "lightning_prune.export.per_layer_shared"
SHARED_FILE = Path(__file__).with_name("per_layer_shared.py")

_MENTIONS_PACKAGE = re.compile(r"^\s*(from|import)\s+lightning_prune\b", re.MULTILINE)


def _package_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of the package in ``tree``, at any depth, in source order."""

    def of_package(module: str | None) -> bool:
        return (module or "").split(".")[0] == "lightning_prune"

    found = [
        node
        for node in ast.walk(tree)
        if (isinstance(node, ast.ImportFrom) and node.level == 0 and of_package(node.module))
        or (isinstance(node, ast.Import) and any(of_package(a.name) for a in node.names))
    ]
    return sorted(found, key=lambda node: node.lineno)


def _definitions(tree: ast.Module) -> dict[str, ast.stmt]:
    """The helper module's top-level classes and functions by name."""
    return {n.name: n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}


def _used_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _bound_name(alias: ast.alias) -> str:
    return alias.asname or alias.name.split(".")[0]


def _requested(template: ast.Module, imports: list[ast.Import | ast.ImportFrom], shared: dict, origin: str) -> list:
    """The names the template imports from the helper module; any other import of the package is refused."""
    names = []
    for node in imports:
        statement = ast.unparse(node)
        if not (isinstance(node, ast.ImportFrom) and node.module == SHARED_MODULE and node in template.body):
            raise ValueError(
                f"Per-layer template {origin} (line {node.lineno}): `{statement}` cannot be rendered; the exported "
                f"modeling file loads without lightning-prune, so a template may import from the package only "
                f"`from {SHARED_MODULE} import <names>` at module level (its definitions are inlined)."
            )
        for alias in node.names:
            if alias.name not in shared or alias.asname:
                raise ValueError(
                    f"Per-layer template {origin} (line {node.lineno}): {SHARED_MODULE} has no class or function "
                    f"{alias.name!r} to inline (or it is imported under another name); it defines {sorted(shared)}."
                )
            names.append(alias.name)
    return names


def _closure(names: list[str], shared: dict[str, ast.stmt]) -> set[str]:
    """``names`` and the helper definitions they use, transitively."""
    needed, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(n for n in _used_names(shared[name]) if n in shared)
    return needed


def _helper_imports(shared_tree: ast.Module, used: set[str], template: ast.Module) -> list[str]:
    """The helper module's imports that the inlined definitions use and the template does not make already."""
    present = {ast.unparse(n) for n in template.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    lines = []
    for node in shared_tree.body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or getattr(node, "module", None) == "__future__":
            continue
        aliases = [a for a in node.names if _bound_name(a) in used]
        for alias in aliases:
            kept = ast.Import([alias]) if isinstance(node, ast.Import) else ast.ImportFrom(node.module, [alias], 0)
            if ast.unparse(kept) not in present:
                lines.append(ast.unparse(kept))
    return lines


def _inlined_block(template: ast.Module, names: list[str], source: str, tree: ast.Module, origin: str) -> str:
    """The source that replaces the template's import of the helper module (``source``, parsed as ``tree``): the
    helper's imports the definitions need (and the template lacks), then the definitions of ``names`` and of what
    they use, in the helper's order."""
    shared = _definitions(tree)
    needed = _closure(names, shared)
    own = {n.name for n in template.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    own |= {t.id for n in template.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    if own & needed:
        raise ValueError(f"Per-layer template {origin} defines {sorted(own & needed)}, which it inlines as well.")
    lines = source.splitlines(keepends=True)
    blocks = []
    for node in (node for name, node in shared.items() if name in needed):
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        blocks.append("".join(lines[first - 1 : node.end_lineno]))
    imports = _helper_imports(tree, set().union(*(_used_names(shared[name]) for name in needed)), template)
    header = f"# Inlined from {SHARED_MODULE} when this file was rendered.\n"
    return header + "".join(f"{line}\n" for line in imports) + "\n\n" + "\n\n".join(blocks)


def inline_shared_helpers(template: str, substitute: Callable[[str], str], origin: str) -> str:
    """``template`` with ``substitute`` applied to its own text and its import of the shared helper module replaced
    by the (unsubstituted) definitions it imports; ``ValueError`` for an import of the package it cannot inline.

    A template that imports nothing from lightning_prune is only substituted (third-party ``.py.txt`` templates
    with ``__FAMILY__``/``__MODULE__`` placeholders render as before)."""
    if not _MENTIONS_PACKAGE.search(template):
        return substitute(template)
    tree = ast.parse(template, filename=origin)
    imports = _package_imports(tree)
    if not imports:  # the pattern matched inside a string
        return substitute(template)
    shared_source = SHARED_FILE.read_text()
    shared_tree = ast.parse(shared_source, filename=str(SHARED_FILE))
    names = _requested(tree, imports, _definitions(shared_tree), origin)
    inlined = _inlined_block(tree, names, shared_source, shared_tree, origin)
    lines = template.splitlines(keepends=True)
    out, position = [], 0
    for index, node in enumerate(imports):  # the first import becomes the inlined block, the others go
        out.append(substitute("".join(lines[position : node.lineno - 1])))
        out.append(inlined if index == 0 else "")
        position = node.end_lineno
    out.append(substitute("".join(lines[position:])))
    return "".join(out)

"""Issue #15: no import cycles inside the package (module-level and function-level imports alike)."""

from __future__ import annotations

from lightning_prune._check_imports import cycles, import_graph


def test_the_package_has_no_import_cycles():
    assert cycles() == []


def test_the_checker_finds_a_cycle_and_ignores_type_checking_imports(tmp_path):
    package = tmp_path / "lightning_prune"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from lightning_prune.a import x\n")
    (package / "a.py").write_text("def f():\n    from lightning_prune.sub.b import y\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("import lightning_prune.a\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lightning_prune.d import z\n"
    )
    (package / "d.py").write_text("from lightning_prune.c import w\n")
    from lightning_prune._check_imports import module_files

    graph = import_graph(module_files(package))
    assert cycles(graph) == [["lightning_prune.a", "lightning_prune.sub.b"]]  # c -> d only under TYPE_CHECKING

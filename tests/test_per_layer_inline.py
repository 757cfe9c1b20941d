"""The per-layer templates share helpers through ``lightning_prune.export.per_layer_shared``: rendering inlines them, so
every rendered modeling file runs standalone (no lightning_prune import, executed where the package cannot be
imported), and a template that imports anything else from the package is refused with a clear error."""

from __future__ import annotations

import ast
import json

import pytest
from conftest import run_without_lightning_prune

from lightning_prune.export.per_layer import (
    FAMILIES,
    PerLayerFamily,
    class_names,
    per_layer_family,
    register_per_layer_family,
    render_modeling_source,
)
from lightning_prune.export.per_layer_inline import SHARED_FILE, SHARED_MODULE

#: run in a fresh isolated interpreter: lightning_prune cannot be imported; exec every rendered file given as
#: ``{model_type: [path, {kind: class name}]}`` and print, per model type, the class names that are missing or wrong
STANDALONE = r"""
import importlib.util, json, sys
sys.modules["lightning_prune"] = None  # any import of the package fails
problems = {}
for model_type, (path, names) in json.loads(sys.argv[1]).items():
    spec = importlib.util.spec_from_file_location(f"modeling_{model_type}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    problems[model_type] = [
        name for name in names.values()
        if getattr(getattr(module, name, None), "__name__", None) != name
        or getattr(module, name).__module__ != module.__name__
    ]
print(json.dumps(problems))
"""


def _package_imports(source: str) -> list[str]:
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_prune"):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Import) and any(a.name.startswith("lightning_prune") for a in node.names):
            found.append(ast.unparse(node))
    return found


def test_every_rendered_family_runs_standalone_without_lightning_prune(tmp_path):
    jobs = {}
    for model_type in FAMILIES.names():
        source = render_modeling_source(model_type)
        assert _package_imports(source) == [], model_type
        path = tmp_path / f"modeling_{model_type}.py"
        path.write_text(source)
        jobs[model_type] = [str(path), class_names(model_type)]
    loaded = run_without_lightning_prune(STANDALONE, [json.dumps(jobs)], tmp_path)
    assert loaded == {model_type: [] for model_type in jobs}


def test_the_shared_helpers_need_only_torch_and_transformers():
    tree = ast.parse(SHARED_FILE.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"torch", "transformers"}, roots


def _render_with(tmp_path, text: str) -> str:
    """Render ``text`` as the qwen2 family's template (placeholders ``__FAMILY__``/``__MODULE__``)."""
    original = per_layer_family("qwen2")
    template = tmp_path / "modeling_qwen2.py.txt"
    template.write_text(text)
    register_per_layer_family("qwen2", PerLayerFamily("Qwen2", str(template), original.kinds, original.nominal_config))
    try:
        return render_modeling_source("qwen2")
    finally:
        register_per_layer_family("qwen2", original)


def test_a_placeholder_template_may_import_shared_helpers(tmp_path):
    text = (
        "from transformers.models.__MODULE__.configuration___MODULE__ import __FAMILY__Config\n\n"
        f"from {SHARED_MODULE} import _EmptyMLP, _KeyValueHeadsConfig\n\n\n"
        "class Pruned__FAMILY__Config(_KeyValueHeadsConfig, __FAMILY__Config):\n"
        '    model_type = "lightning_prune___MODULE__"\n'
    )
    source = _render_with(tmp_path, text)
    assert source.startswith("from transformers.models.qwen2.configuration_qwen2 import Qwen2Config\n")
    assert source.endswith(
        'class PrunedQwen2Config(_KeyValueHeadsConfig, Qwen2Config):\n    model_type = "lightning_prune_qwen2"\n'
    )
    assert _package_imports(source) == []
    defined = [n.name for n in ast.parse(source).body if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
    # what the imported names use comes along (_BiasOnly, _LayerShapesConfig), in the helper module's order
    assert defined == ["_LayerShapesConfig", "_KeyValueHeadsConfig", "_BiasOnly", "_EmptyMLP", "PrunedQwen2Config"]
    assert "import torch\n" in source  # _BiasOnly needs it; the template did not import it


def test_a_template_without_package_imports_is_only_substituted(tmp_path):
    text = '"""__FAMILY__ per layer: from lightning_prune import nothing."""\nclass Pruned__FAMILY__Model:\n    pass\n'
    assert _render_with(tmp_path, text) == text.replace("__FAMILY__", "Qwen2")


@pytest.mark.parametrize(
    "line, match",
    [
        ("from lightning_prune.export.per_layer import MODELING_FILENAME", "may import from the package only"),
        ("import lightning_prune", "may import from the package only"),
        ("from lightning_prune.export import per_layer_shared", "may import from the package only"),
        ("def f():\n    from lightning_prune.export.per_layer_shared import _BiasOnly", "at module level"),
        (f"from {SHARED_MODULE} import _Missing", "has no class or function '_Missing'"),
        (f"from {SHARED_MODULE} import _BiasOnly as Bias", "under another name"),
        (f"from {SHARED_MODULE} import _BiasOnly\n\n\nclass _BiasOnly:\n    pass", r"defines \['_BiasOnly'\]"),
    ],
)
def test_a_template_that_imports_other_package_code_is_refused(tmp_path, line, match):
    with pytest.raises(ValueError, match=match) as error:
        _render_with(tmp_path, f"import torch\n\n{line}\n")
    assert "modeling_qwen2.py.txt" in str(error.value)

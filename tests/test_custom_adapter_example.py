"""The worked example of docs/adapters.md (examples/custom_adapter.py) runs and exports a checked model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import lightning_prune as lp
from lightning_prune.adapters import available_adapters
from lightning_prune.export.report import count_parameters

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_adapter.py"


@pytest.fixture(scope="module")
def example():
    if "custom_adapter_example" in sys.modules:
        return sys.modules["custom_adapter_example"]
    spec = importlib.util.spec_from_file_location("custom_adapter_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["custom_adapter_example"] = module
    spec.loader.exec_module(module)  # registers the "residual_mlp" adapter
    return module


def test_worked_example_exports_an_equivalent_smaller_model(example):
    assert "residual_mlp" in available_adapters()
    compact, pruner = example.main(steps=40)
    report = pruner.last_report
    assert report.max_abs_diff <= 1e-4 * report.reference_scale
    assert count_parameters(compact) == report.params_after < report.params_before
    assert sum(compact.widths) == sum(report.kept_units["ffn"]) < sum(pruner.model.widths)
    ids = torch.randint(0, 32, (2, 5))
    pruner.model.eval()
    with torch.no_grad():
        assert torch.allclose(compact(ids), pruner.model(ids), atol=1e-5)


def test_unknown_model_error_says_how_to_register(example):
    class Unknown(torch.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(lp.UnsupportedModelError) as info:
        lp.attach(Unknown(), lp.L0Config(structures=("ffn",)))
    message = str(info.value)
    assert "residual_mlp" in message and "llama" in message
    assert "register_adapter" in message and "docs/adapters.md" in message

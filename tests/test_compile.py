"""Training a gated model under ``torch.compile`` (issue #16): attach first, then compile.

The losses equal eager training's, and the number of compiled graphs stays constant after the first step (no
recompilation per step: the masks reach the graphs as inputs; the pruner's pre-hook runs eagerly). The backend
is ``aot_eager`` (Dynamo + AOTAutograd, no C++ compilation: seconds on CPU); ``benchmarks/compile_overhead.py``
runs inductor and reports the compiled step-time ratio.
"""

from __future__ import annotations

import torch
from conftest import tiny_causal_lm, with_lora
from torch._dynamo.utils import counters

import lightning_prune as lp


def _train(compiled: bool, lora: bool, steps: int = 5) -> tuple[list[float], list[int]]:
    model = tiny_causal_lm("llama").train()
    if lora:
        model = with_lora(model)
    pruner = lp.attach(model, lp.L0Config(structures=("heads", "ffn", "hidden"), target_sparsity=0.3))
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-3))
    forward = torch.compile(model, backend="aot_eager") if compiled else model
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    losses, graphs = [], []
    for step in range(steps):
        pruner.sample_seed = 100 + step  # what the Lightning callback does before every batch
        loss = forward(input_ids=ids, labels=ids).loss + pruner.penalty()
        loss.backward()
        optimizer.step()
        pruner.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        graphs.append(int(counters["stats"]["unique_graphs"]))
    return losses, graphs


def test_compiled_training_matches_eager_without_recompiling():
    for lora in (False, True):
        torch._dynamo.reset()
        counters.clear()
        eager, _ = _train(compiled=False, lora=lora)
        torch._dynamo.reset()
        counters.clear()
        compiled, graphs = _train(compiled=True, lora=lora)
        assert max(abs(a - b) for a, b in zip(eager, compiled)) <= 1e-4 * abs(eager[0]), (eager, compiled)
        assert graphs[0] >= 1 and len(set(graphs[1:])) == 1 and graphs[-1] == graphs[0], graphs
        assert sum(counters["graph_break"].values()) <= 3 * 1  # one break at the top of the first forward


def test_eval_and_export_after_compiled_training():
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(structures=("heads", "ffn"), target_sparsity=0.3))
    compiled = torch.compile(model, backend="aot_eager")
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        gated = compiled.eval()(input_ids=ids).logits
    compact = pruner.export()
    with torch.no_grad():
        assert torch.allclose(compact(input_ids=ids).logits, gated, atol=1e-5)

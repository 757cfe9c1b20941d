"""The vectorised cost model equals the per-term definition (``CostTerm.count``) in value and gradient, for the
terms of every transformer adapter, on masks and on keep probabilities."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import tiny_causal_lm

import lightning_prune as lp

ALL = ("heads", "ffn", "hidden", "attn_block", "mlp_block")


def _models():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=64))
    bert = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=48, vocab_size=64
        )
    )
    return {"llama": tiny_causal_lm("llama"), "qwen2": tiny_causal_lm("qwen2"), "gpt2": gpt2, "bert": bert}


HEAD_DIMS = ("heads", "qk_dims", "v_dims", "hidden", "attn_block")  # q rows = KV groups × n_rep × kept q/k dims
CASES = [(n, s) for n in ("llama", "qwen2", "gpt2", "bert") for s in (ALL, ("ffn",), ("heads", "hidden"))]
CASES += [("llama", HEAD_DIMS), ("qwen3", HEAD_DIMS)]


CASES += [("resnet_cnn", ("channels",)), ("mobilenet_cnn", ("channels",))]  # subset dims of the traced row


def _attach(name: str, structures):
    config = lp.L0Config(target_sparsity=0.0, structures=structures)
    if name.endswith("_cnn"):  # traced: every conv/BN/linear over subsets of the one `channels` row
        from torchvision_style_models import MobileNetV2Small, ResNetSmall

        torch.manual_seed(0)
        model = (ResNetSmall if name == "resnet_cnn" else MobileNetV2Small)().eval()
        return lp.attach(model, config, example_inputs=torch.randn(2, 3, 16, 16))
    model = tiny_causal_lm("qwen3") if name == "qwen3" else _models()[name]
    return lp.attach(model, config)


@pytest.mark.parametrize("name,structures", CASES, ids=[f"{n}-{'+'.join(s)}" for n, s in CASES])
def test_vectorised_sum_equals_the_per_term_definition(name, structures):
    pruner = _attach(name, structures)
    gen = torch.Generator().manual_seed(0)
    for binary in (True, False):
        values = {}
        for s, spec in pruner.specs.items():
            v = torch.rand(spec.rows, spec.units, generator=gen, dtype=torch.float64)
            values[s] = (v > 0.4).double() if binary else v
            values[s].requires_grad_(True)
        for prunable_only in (True, False):
            params, flops = pruner.cost._sum(values, prunable_only)
            ref_p = ref_f = 0.0
            for term in pruner.cost.terms:
                if prunable_only and not term.prunable:
                    continue
                p, f = term.count(values)
                ref_p, ref_f = ref_p + p, ref_f + f
            assert float(params) == pytest.approx(float(ref_p), rel=1e-12)
            assert float(flops) == pytest.approx(float(ref_f), rel=1e-12)
            grads = torch.autograd.grad(params + flops, list(values.values()))
            ref = torch.autograd.grad(ref_p + ref_f, list(values.values()), allow_unused=True)
            for g, r in zip(grads, ref):
                r = torch.zeros_like(g) if r is None else r
                assert torch.allclose(g, r, rtol=1e-10, atol=1e-8)

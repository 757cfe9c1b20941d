"""SmolLM2-135M (real weights, offline) through the exact-budget methods a user would pick (L0 and gradual, and
gradual on peft LoRA at 50%, the benchmark's best LLM row): a few training steps (dense, then pruning heads + FFN
channels with widths free across layers), ``save_compact`` → ``load_compact``, and greedy decoding with the reloaded
model's KV cache against the gated model's uncached tokens. Prints the export report's sizes and check differences
per case.

    OMP_NUM_THREADS=2 python benchmarks/smollm2_export_check.py      # ~20 s after the first GGUF conversion
"""

from __future__ import annotations

import tempfile
import time

import _common
import torch
from transformers import AutoModelForCausalLM

import lightning_prune as lp
from lightning_prune.pretrained import smollm2_path


def train_steps(model, pruner, optimizer, ids: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        (model(input_ids=ids, labels=ids).loss + pruner.penalty()).backward()
        optimizer.step()
        optimizer.zero_grad()


@torch.no_grad()
def greedy_uncached(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    tokens = prompt
    for _ in range(new_tokens):
        tokens = torch.cat([tokens, model(input_ids=tokens).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens


def check(config: lp.PruningConfig, lora: bool = False) -> str:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), torch_dtype=torch.float32).train()
    if lora:  # LoRA on all seven projections, B non-zero so that the merge matters
        model = _common.lora(model, r=8, b_std=0.01)
    pruner = lp.attach(model, config)
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-5 if not lora else 5e-4))
    pruner.hook_optimizer(optimizer)
    ids = torch.randint(0, model.config.vocab_size, (2, 32))
    pruner.set_phase("dense")
    train_steps(model, pruner, optimizer, ids, 2)
    pruner.set_phase("prune")
    train_steps(model, pruner, optimizer, ids, 3)
    pruner.set_phase("frozen")
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        reloaded = lp.load_compact(pruner.save_compact(f"{tmp}/compact"))
    report = lp.export_report(reloaded)
    prompt = ids[:1, :8]
    with torch.no_grad():
        cached = reloaded.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    same = torch.equal(cached, greedy_uncached(model, prompt, 8))
    return (
        f"{config.method_name}{' + LoRA' if lora else ''}: sparsity {report.exact_sparsity:.4f}, "
        f"params {report.params_before:,} -> "
        f"{report.params_after:,}, check max diff {report.max_abs_diff:.2e} (scale {report.reference_scale:.1f}), "
        f"generation diff {report.generation_max_abs_diff:.2e}, reloaded cached tokens == gated uncached: {same}"
    )


def main() -> None:
    start = time.time()
    for config, lora in (
        (lp.GradualConfig(target_sparsity=0.3, structures=("heads", "ffn"), warmup_steps=2), False),
        (lp.L0Config(target_sparsity=0.3, structures=("heads", "ffn"), warmup_steps=2), False),
        (lp.GradualConfig(target_sparsity=0.5, structures=("heads", "ffn"), distill_weight=0.5), True),
    ):
        print(check(config, lora))
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

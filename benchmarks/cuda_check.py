"""The CUDA / bf16 paths, checked on a GPU: every method trains a LoRA-wrapped Llama (GQA) in bf16 on the GPU,
keeps its gates and multipliers in fp32, stays finite, and exports through the equivalence check at the
documented half-precision tolerance; the same for an fp32 run at the fp32 tolerance.

Not a test (tests never depend on a GPU); run it when a GPU is at hand:

    python benchmarks/cuda_check.py
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import llama, lora

import lightning_prune as lp
from lightning_prune.export.verify import HALF_PRECISION_RTOL

METHODS = {
    "l0 (all structures)": lambda steps: lp.L0Config(
        target_sparsity=0.3, structures=("heads", "ffn", "hidden", "attn_block", "mlp_block")
    ),
    "l0 + distill": lambda steps: lp.L0Config(target_sparsity=0.3, structures=("heads", "ffn"), distill_weight=1.0),
    "ste": lambda steps: lp.STEConfig(target_sparsity=0.3, structures=("heads", "ffn")),
    "polarization": lambda steps: lp.PolarizationConfig(target_sparsity=0.3, structures=("heads", "ffn")),
    "compresso": lambda steps: lp.CompressoConfig(target_sparsity=0.3),
    "pat": lambda steps: lp.PATConfig(target_hidden_size=192, total_steps=steps, hsm_rank=8),
    "atp": lambda steps: lp.ATPConfig(target_sparsity=0.3),
}


def run(name: str, dtype: torch.dtype, device: torch.device, steps: int) -> str:
    model = lora(llama(seed=0, dtype=torch.float32, device=device)).to(device)
    pruner = lp.attach(model, METHODS[name](steps))
    model.to(dtype)
    opt = torch.optim.AdamW(pruner.param_groups(lr=1e-3))
    pruner.hook_optimizer(opt)
    gen = torch.Generator().manual_seed(0)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (4, 64), generator=gen).to(device)
        loss = model(input_ids=ids, labels=ids).loss.float() + pruner.penalty()
        if not torch.isfinite(loss):
            raise RuntimeError(f"{name}: non-finite loss {loss.item()}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        pruner.step()
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    train_s = time.perf_counter() - start
    fp32_state = all(p.dtype == torch.float32 for p in pruner.state.parameters()) and all(
        p.dtype == torch.float32 for p in pruner.multiplier_parameters()
    )
    finite = all(torch.isfinite(p).all() for p in pruner.state.parameters())
    compact = pruner.export()
    report = pruner.last_report
    on_device = {p.device.type for p in compact.parameters()} == {device.type}
    tolerance = HALF_PRECISION_RTOL.get(dtype, pruner.config.export_rtol)
    relative = report.max_abs_diff / report.reference_scale
    ok = fp32_state and finite and on_device and relative <= tolerance
    kept = report.params_after / report.params_before
    return (
        f"{name:<22}{str(dtype).removeprefix('torch.'):>10}{train_s:>9.1f}{kept:>9.1%}"
        f"{relative:>12.2e}{tolerance:>10.0e}{str(fp32_state):>7}{str(on_device):>8}   {'ok' if ok else 'FAIL'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; {args.steps} training steps per method")
    print(f"{'method':<22}{'dtype':>10}{'train s':>9}{'kept':>9}{'export rel':>12}{'tol':>10}{'fp32':>7}{'device':>8}")
    lines, failures = [], 0
    for method in METHODS:
        for dtype in (torch.bfloat16, torch.float32):
            try:
                line = run(method, dtype, device, args.steps)
            except Exception as error:  # report every method, then fail
                line = f"{method:<22}{str(dtype):>10}   ERROR {type(error).__name__}: {error}"[:400]
            failures += not line.endswith("ok")
            print(line, flush=True)
            lines.append(line)
    print(f"headline: {len(lines) - failures}/{len(lines)} method x dtype runs trained and exported on {device.type}")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()

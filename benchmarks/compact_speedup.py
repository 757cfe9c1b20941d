"""Real speed-up of the compact model: latency of the exported model vs the dense one at several
sparsities and structure mixes, against the FLOP ratio, measured side by side in one run.

Gates are set so that the deterministic masks keep the asked-for counts (``keep_units``), then the model is
exported (with its equivalence check) and timed in inference mode, round-robin with the dense model.

    python benchmarks/compact_speedup.py --quick
"""

from __future__ import annotations

import argparse

import torch
from _common import interleaved_median, llama

import lightning_prune as lp

# name -> (structures, fraction of units kept per structure, uniform?[, multiple_of])
CASES = {
    "heads 50%": (("heads",), {"heads": 0.5}, True),
    "ffn 50%": (("ffn",), {"ffn": 0.5}, True),
    "ffn 75% removed": (("ffn",), {"ffn": 0.25}, True),
    "heads+ffn 50%": (("heads", "ffn"), {"heads": 0.5, "ffn": 0.5}, True),
    "hidden 25% removed": (("hidden",), {"hidden": 0.75}, True),
    "heads+ffn+hidden 50%": (("heads", "ffn", "hidden"), {"heads": 0.5, "ffn": 0.5, "hidden": 0.75}, True),
    "per-layer heads+ffn": (("heads", "ffn"), None, False),
    "per-layer, ffn multiple of 32": (("heads", "ffn"), None, False, {"ffn": 32}),
    "qk+v dims 50% (per-layer)": (("qk_dims", "v_dims"), {"qk_dims": 0.5, "v_dims": 0.5}, True),
}


def build(case, shape, dtype, device):
    structures, keep, uniform, multiple_of = (*case, {})[:4]
    model = llama(seed=0, dtype=torch.float32, device=device, **shape).eval()
    if keep is not None:
        head_dim = shape["hidden"] // shape["heads"]
        specs = {
            "heads": shape["kv_heads"],
            "ffn": shape["ffn"],
            "hidden": shape["hidden"],
            "qk_dims": head_dim // 2,  # RoPE pairs
            "v_dims": head_dim,
        }
        keep_units = {s: max(1, int(round(specs[s] * f))) for s, f in keep.items()}
        config = lp.L0Config(
            target_sparsity=0.0, structures=structures, keep_units=keep_units, uniform=uniform, match_target=False
        )
    else:  # per-layer: layer i keeps a different share, average ~50%
        config = lp.L0Config(target_sparsity=0.0, structures=structures, match_target=False, multiple_of=multiple_of)
    pruner = lp.attach(model, config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for gate in pruner.gates.values():
            gate.log_alpha.copy_(torch.randn(gate.log_alpha.shape, generator=gen).to(gate.log_alpha.device))
            if keep is None:  # P(kept) from ~0.25 (first layer) to ~0.75 (last): non-uniform counts
                rows = gate.log_alpha.shape[0]
                bias = torch.linspace(-2.6, 0.4, rows)[:, None]
                gate.log_alpha.add_(bias.to(gate.log_alpha.device))
    compact = pruner.export()
    report = pruner.last_report
    dense = llama(seed=0, dtype=torch.float32, device=device, **shape).eval()
    return dense.to(device, dtype), compact.to(device, dtype), report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--big", action="store_true", help="a >=1B-parameter Llama shape (GPU only)")
    args = parser.parse_args()
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    if args.big:
        shape = dict(hidden=2048, layers=16, heads=32, kv_heads=8, ffn=8192, vocab=32000)
        batch, seq, repeats = 8, 1024, 20
    else:
        shape = dict(hidden=512, layers=4, heads=8, kv_heads=8, ffn=1536, vocab=2000)
        batch, seq, repeats = (4, 128, 8) if args.quick else (8, 256, 20)
    ids = torch.randint(0, shape["vocab"], (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    cases = dict(list(CASES.items())[:4] + list(CASES.items())[-3:]) if args.quick else CASES

    def timed(model):
        def run():
            with torch.inference_mode():
                model(input_ids=ids)
            if device.type == "cuda":
                torch.cuda.synchronize()

        return run

    print(f"dense: Llama-shaped {shape}, batch {batch}x{seq}, {args.dtype}, {device.type}")
    print(f"{'case':<28}{'params kept':>12}{'FLOP ratio':>12}{'speed-up':>10}{'speed-up/FLOP':>15}{'shapes':>11}")
    worst = None
    for name, case in cases.items():
        dense, compact, report = build(case, shape, dtype, device)
        times = interleaved_median({"dense": timed(dense), "compact": timed(compact)}, repeats=repeats)
        flop_ratio = report.flops_per_token_before / report.flops_per_token_after
        speedup = times["dense"] / times["compact"]
        efficiency = speedup / flop_ratio
        worst = efficiency if worst is None else min(worst, efficiency)
        kept = report.params_after / report.params_before
        shapes = "uniform" if report.uniform else "per-layer"
        print(f"{name:<28}{kept:>12.1%}{flop_ratio:>12.2f}{speedup:>10.2f}{efficiency:>15.2f}{shapes:>11}")
        del dense, compact
    print(f"headline: worst speed-up / FLOP-ratio = {worst:.2f} (goal >= 0.90)")


if __name__ == "__main__":
    main()

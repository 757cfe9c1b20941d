"""Training overhead of the gates: step time and memory of the same model, batch and LoRA config with
and without gates, measured side by side in one run (ratios only: never compare absolute times across runs).

Memory is the activation memory autograd saves for backward plus parameter memory (exact byte counts;
on CUDA the script also reports peak allocated memory).

    python benchmarks/training_overhead.py --quick
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import interleaved_median, llama, lora, param_bytes, saved_activation_bytes

import lightning_prune as lp

VARIANTS = {  # L0 gates on each structure set
    "heads": lambda: lp.L0Config(target_sparsity=0.2, structures=("heads",)),
    "ffn": lambda: lp.L0Config(target_sparsity=0.2, structures=("ffn",)),
    "hidden": lambda: lp.L0Config(target_sparsity=0.2, structures=("hidden",)),
    "heads+ffn": lambda: lp.L0Config(target_sparsity=0.2, structures=("heads", "ffn")),
    "all": lambda: lp.L0Config(target_sparsity=0.2, structures=("heads", "ffn", "hidden", "attn_block", "mlp_block")),
    "qk+v dims": lambda: lp.L0Config(target_sparsity=0.2, structures=("qk_dims", "v_dims")),
}

METHODS = {  # each method with its default structures (--methods); ATP: the joint merged-path step
    "l0": lambda: lp.L0Config(target_sparsity=0.2, structures=("heads", "ffn")),
    "ste": lambda: lp.STEConfig(target_sparsity=0.2, structures=("heads", "ffn")),
    "polarization": lambda: lp.PolarizationConfig(target_sparsity=0.2, structures=("heads", "ffn")),
    "compresso": lambda: lp.CompressoConfig(target_sparsity=0.2),
    # PAT: the paper's rank 200 on hidden 4096 is ~5% of d; the same fraction here is 12
    "pat": lambda: lp.PATConfig(target_hidden_size=192, total_steps=1000, hsm_rank=12),
    "atp": lambda: lp.ATPConfig(target_sparsity=0.2),
    "atp (paper set)": lambda: lp.ATPConfig(target_sparsity=0.2, structures=("ffn", "qk_dims", "v_dims")),
    "l0+distill": lambda: lp.L0Config(target_sparsity=0.2, structures=("heads", "ffn"), distill_weight=1.0),
}


def shape_for_width(width: int) -> dict:
    """A Llama-7B-proportioned shape at another width: head_dim 32 here (64 from width 2048), GQA 2:1, FFN 2.6875x."""
    head_dim = 64 if width >= 2048 else 32
    heads = width // head_dim
    return dict(hidden=width, layers=4, heads=heads, kv_heads=max(1, heads // 2), ffn=int(2.6875 * width), vocab=2000)


def measure(
    variants: dict, shape: dict, batch: int, seq: int, repeats: int, device, dtype, clock=time.perf_counter
) -> list[tuple]:
    """(name, median step seconds, activation + parameter bytes, CUDA peak or None) for plain and each variant."""
    models, pruners, optimizers = {}, {}, {}
    for name in ["plain", *variants]:  # one base model per variant (same seed: identical weights), each with LoRA
        model = lora(llama(seed=0, dtype=dtype, device=device, **shape)).to(device)
        if name != "plain":
            pruners[name] = lp.attach(model, variants[name]())
            groups = pruners[name].param_groups(lr=1e-4)
        else:
            groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-4}]
        models[name] = model.train()
        optimizers[name] = torch.optim.AdamW(groups)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, models["plain"].config.vocab_size, (batch, seq), generator=gen).to(device)

    def step(name):
        def run():
            model, opt = models[name], optimizers[name]
            loss = model(input_ids=ids, labels=ids).loss
            if name in pruners:
                loss = loss + pruners[name].penalty()
            loss.backward()
            opt.step()
            if name in pruners:
                pruners[name].step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()

        return run

    times = interleaved_median({name: step(name) for name in models}, repeats=repeats, clock=clock)
    rows = []
    for name, model in models.items():
        counter = [0]
        with saved_activation_bytes(counter):
            loss = model(input_ids=ids, labels=ids).loss
            if name in pruners:
                loss = loss + pruners[name].penalty()
        del loss
        peak = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step(name)()
            peak = torch.cuda.max_memory_allocated()
        rows.append((name, times[name], counter[0] + param_bytes(model), peak))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--methods", action="store_true", help="one row per method instead of per structure set")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--big", action="store_true", help="a >=1B-parameter Llama shape (GPU only)")
    parser.add_argument(
        "--widths",
        type=int,
        nargs="+",
        default=None,
        help="instead of one model: the same 4-layer Llama shape at each hidden size (how the ratio scales)",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="CPU only: time steps by this thread's CPU time on one thread (robust to other jobs on the machine)",
    )
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    clock = time.perf_counter
    if args.cpu_time:
        if device.type != "cpu":
            parser.error("--cpu-time measures CPU work; on CUDA the wall clock after synchronize is the right one")
        torch.set_num_threads(1)
        clock = time.thread_time
    batch, seq, repeats = (4, 64, 10) if args.quick else (8, 128, 30)
    variants = METHODS if args.methods else VARIANTS
    args.clock = clock
    if args.widths:
        return scaling(args, variants, batch, seq, repeats, device, dtype)
    shape = dict(hidden=2048, layers=16, heads=32, kv_heads=8, ffn=8192, vocab=32000) if args.big else {}
    if args.big:
        batch, seq = 4, 1024
    rows = measure(variants, shape, batch, seq, repeats, device, dtype, clock)

    base_t, base_m, base_peak = rows[0][1], rows[0][2], rows[0][3]
    n_params = sum(p.numel() for p in llama(**shape, device="meta").parameters())
    print(
        f"model: Llama-shaped, {n_params / 1e6:.1f}M params, LoRA r=8 on all projections, batch {batch}x{seq}, "
        f"{args.dtype}, {device.type}, {'CPU time, 1 thread' if args.cpu_time else 'wall clock'}"
    )
    print(
        f"{'variant':<16}{'step (ms)':>12}{'time ratio':>12}{'memory ratio':>14}"
        + ("  peak ratio" if base_peak else "")
    )
    worst_t, worst_m = 1.0, 1.0
    for name, t, m, peak in rows:
        line = f"{name:<16}{t * 1e3:>12.1f}{t / base_t:>12.3f}{m / base_m:>14.3f}"
        if peak:
            line += f"{peak / base_peak:>12.3f}"
        print(line)
        worst_t, worst_m = max(worst_t, t / base_t), max(worst_m, m / base_m)
    print(
        f"headline: worst gated/plain step-time ratio {worst_t:.3f}x (goal <= 1.10), "
        f"worst memory ratio {worst_m:.3f}x (goal <= 1.05)"
    )


def scaling(args, variants: dict, batch: int, seq: int, repeats: int, device, dtype) -> None:
    """The gates' elementwise work grows with tokens x width, a layer's matrix products with tokens x width^2:
    the overhead ratio falls as the model widens. One table: rows = variants, columns = widths."""
    results = {}
    for width in args.widths:
        shape = shape_for_width(width)
        n_params = sum(p.numel() for p in llama(**shape, device="meta").parameters())
        rows = measure(variants, shape, batch, seq, max(5, repeats // 2), device, dtype, args.clock)
        base_t, base_m = rows[0][1], rows[0][2]
        results[width] = {name: (t / base_t, m / base_m) for name, t, m, _ in rows}
        print(f"width {width}: {n_params / 1e6:.1f}M params, plain step {base_t * 1e3:.1f} ms", flush=True)
    clock = "CPU time, 1 thread" if args.cpu_time else "wall clock"
    print(f"time / memory ratio vs plain, batch {batch}x{seq}, {args.dtype}, {device.type}, {clock}")
    print(f"{'variant':<14}" + "".join(f"{'hidden ' + str(w):>18}" for w in args.widths))
    for name in results[args.widths[0]]:
        cells = "".join(f"{results[w][name][0]:>10.3f} / {results[w][name][1]:.2f}" for w in args.widths)
        print(f"{name:<14}{cells}")
    widest = args.widths[-1]
    worst_t = max(t for t, _ in results[widest].values())
    worst_m = max(m for _, m in results[widest].values())
    print(
        f"headline: at hidden {widest} the worst step-time ratio is {worst_t:.3f}x (goal <= 1.10), "
        f"worst memory ratio {worst_m:.3f}x (goal <= 1.05)"
    )


if __name__ == "__main__":
    main()

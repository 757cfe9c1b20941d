"""Gates under ``torch.compile``: losses equal eager, no recompilation per step, and the compiled step-time ratio
gated vs plain, measured side by side in one run (issue #16).

Attach first, then compile (``torch.compile(model)``); attaching to an already compiled model is refused. The
pruner's root pre-hook (mask sampling, Python bookkeeping) runs eagerly (``torch.compiler.disable``) and hands the
masks to the compiled graphs as inputs: one graph break at the top of the forward, none per step.

    python benchmarks/compile_overhead.py                  # 50M-param Llama shape, LoRA, inductor
    python benchmarks/compile_overhead.py --backend aot_eager --steps 6   # quick, no C++ compilation
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import interleaved_median, llama, lora
from torch._dynamo.utils import counters

import lightning_prune as lp


def build(gated: bool, shape: dict, compiled: bool, backend: str):
    model = lora(llama(seed=0, **shape)).train()
    pruner = None
    if gated:
        pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, structures=("heads", "ffn")))
        groups = pruner.param_groups(lr=1e-4)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-4}]
    optimizer = torch.optim.AdamW(groups)
    forward = torch.compile(model, backend=backend) if compiled else model
    return model, pruner, optimizer, forward


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (after warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    heads = args.width // 32
    shape = dict(hidden=args.width, layers=4, heads=heads, kv_heads=max(1, heads // 2), ffn=int(2.6875 * args.width))
    ids = torch.randint(0, 2000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))

    # 1. equal losses and no recompilation per step (same seeds, gated model, eager vs compiled)
    losses, graphs = {}, []
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        model, pruner, optimizer, forward = build(True, shape, compiled, args.backend)
        losses[compiled] = []
        for step in range(4):
            pruner.sample_seed = 1000 + step
            loss = forward(input_ids=ids, labels=ids).loss + pruner.penalty()
            loss.backward()
            optimizer.step()
            pruner.step()
            optimizer.zero_grad(set_to_none=True)
            losses[compiled].append(float(loss.detach()))
            if compiled:
                graphs.append(int(counters["stats"]["unique_graphs"]))
    worst = max(abs(a - b) / abs(a) for a, b in zip(losses[False], losses[True]))
    print(f"losses eager {[round(x, 5) for x in losses[False]]}")
    print(f"losses {args.backend} {[round(x, 5) for x in losses[True]]} (max relative difference {worst:.2e})")
    print(f"compiled graphs after each step: {graphs} (constant: no recompilation per step)")

    # 2. compiled step time, gated vs plain (and eager for reference), interleaved
    torch._dynamo.reset()
    variants = {}
    for name, gated, compiled in (
        ("plain eager", False, False),
        ("gated eager", True, False),
        ("plain compiled", False, True),
        ("gated compiled", True, True),
    ):
        model, pruner, optimizer, forward = build(gated, shape, compiled, args.backend)

        def run(model=model, pruner=pruner, optimizer=optimizer, forward=forward):
            loss = forward(input_ids=ids, labels=ids).loss
            if pruner is not None:
                loss = loss + pruner.penalty()
            loss.backward()
            optimizer.step()
            if pruner is not None:
                pruner.step()
            optimizer.zero_grad(set_to_none=True)

        variants[name] = run
    start = time.perf_counter()
    times = interleaved_median(variants, repeats=args.steps, warmup=3)
    print(
        f"\nstep time, median of {args.steps} (width {args.width}, batch {args.batch}x{args.seq}, LoRA r=8, "
        f"{torch.get_num_threads()} threads, {time.perf_counter() - start:.0f}s incl. compilation)"
    )
    for name, t in times.items():
        print(f"  {name:<16} {t * 1e3:8.1f} ms")
    ratios = {
        "gated/plain eager": times["gated eager"] / times["plain eager"],
        "gated/plain compiled": times["gated compiled"] / times["plain compiled"],
        "compiled/eager plain": times["plain compiled"] / times["plain eager"],
        "compiled/eager gated": times["gated compiled"] / times["gated eager"],
    }
    for name, r in ratios.items():
        print(f"  {name:<22} {r:.2f}")
    return {"max_relative_loss_difference": worst, "graphs": graphs, **ratios}


if __name__ == "__main__":
    main()

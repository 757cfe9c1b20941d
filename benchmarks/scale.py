"""Scale of the gate machinery on 7B/8B shapes: attach, penalty + step, stats() and mask selection, without weights.

The models are built on the meta device (no memory, no initialisation), so the timings are those of the
pruner alone: the cost model, the gates and the deterministic-mask selection of :mod:`lightning_prune.selection`
over every unit of a Llama-2-7B (32 layers × 32 heads, FFN 11008, hidden 4096, vocab 32000) and a Llama-3-8B
(GQA 32/8, FFN 14336, hidden 4096, vocab 128256). Gates get random scores so that the selection has real work to
do (the learned counts miss the target in both directions across seeds). "Export plan" is the export's
``build_compact`` on the meta model: every slice index, per-layer shape and the compact model's structure, without
weights (the weight work itself is measured by ``benchmarks/export_memory.py`` on a real 1.1B model); its
parameter count is checked against the cost model's exact count.

    OMP_NUM_THREADS=1 python benchmarks/scale.py
    OMP_NUM_THREADS=1 python benchmarks/scale.py --models llama2-7b --structures heads ffn --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import _common  # noqa: F401  (sets the offline environment variables)
import torch

import lightning_prune as lp
from lightning_prune.export.merge import MergedWeights
from lightning_prune.pruner import STATE_ATTRIBUTE, _binary

SHAPES = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152),
}  # fmt: skip
DEFAULT_MODELS = ["llama2-7b", "llama3-8b"]


def meta_model(shape: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(**shape, head_dim=shape["hidden_size"] // shape["num_attention_heads"]))


def randomise(pruner, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in pruner.gates.values():
            gate.log_alpha.copy_(torch.randn(gate.log_alpha.shape, generator=gen) * 3.0)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run(
    name: str, structures: tuple[str, ...], target: float, repeats: int, multiple_of: int | None, uniform: bool
) -> dict:
    model = meta_model(SHAPES[name])
    config = lp.L0Config(
        target_sparsity=target,
        structures=structures,
        multiple_of={"ffn": multiple_of} if multiple_of and "ffn" in structures else {},
        uniform=uniform,
    )
    start = time.perf_counter()
    pruner = lp.attach(model, config)
    attach_s = time.perf_counter() - start
    randomise(pruner, seed=0)  # attach on a meta model gives real gates on the CPU
    units = sum(spec.rows * spec.units for spec in pruner.specs.values())

    optimizer = torch.optim.AdamW(
        [{"params": pruner.gate_parameters(), "lr": 0.1}, {"params": pruner.multiplier_parameters(), "lr": 0.01}]
    )

    def penalty_step():  # the gates' share of a training step: penalty, its backward, their optimizer update
        pruner.penalty().backward()
        optimizer.step()
        pruner.step()
        optimizer.zero_grad(set_to_none=True)

    penalty_s, _ = timed(penalty_step, repeats * 5)

    def fresh(fn, seed):
        def call():
            randomise(pruner, seed())  # new gate values: the mask cache is cold, as after a training step
            start = time.perf_counter()
            out = fn()
            return time.perf_counter() - start, out

        return call

    seeds = iter(range(1, 10**6))
    select = [fresh(pruner.deterministic_masks, lambda: next(seeds))() for _ in range(repeats)]
    stats = [fresh(pruner.stats, lambda: next(seeds))() for _ in range(repeats)]
    masks = select[-1][1]
    exact = float(pruner.cost.sparsity(_binary(masks)))
    plans = []
    for _ in range(repeats):
        start = time.perf_counter()
        weights = MergedWeights(pruner.model, skip_prefix=STATE_ATTRIBUTE)
        compact, _ = pruner.config.build_compact(pruner, weights, masks)
        plans.append(time.perf_counter() - start)
    counted = sum(p.numel() for p in compact.parameters())
    predicted = int(round(float(pruner.cost.total(_binary(masks))[0])))
    if counted != predicted:
        raise RuntimeError(f"{name}: the planned compact model has {counted} parameters, the cost model {predicted}")
    return {
        "model": name,
        "structures": "+".join(structures)
        + (f" (ffn multiple_of {multiple_of})" if config.multiple_of else "")
        + (" uniform" if uniform else ""),
        "units": units,
        "attach_s": attach_s,
        "penalty_step_ms": penalty_s * 1e3,
        "select_s": statistics.median(t for t, _ in select),
        "stats_s": statistics.median(t for t, _ in stats),
        "plan_s": statistics.median(plans),
        "exact_sparsity": exact,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(SHAPES))
    parser.add_argument("--structures", nargs="+", default=["heads", "ffn", "hidden"])
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--multiple-of", type=int, default=None, help="also round FFN rows to this multiple")
    parser.add_argument("--uniform", action="store_true", help="the same count in every layer")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning_prune").setLevel(logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); medians of {args.repeats} (penalty: ×5)")
    header = (
        "| model | structures | units | attach | penalty+backward+step | mask selection | stats() | export plan "
        "| exact sparsity |"
    )
    print(header)
    print("|" + "---|" * 9)
    for name in args.models:
        r = run(name, tuple(args.structures), args.target, args.repeats, args.multiple_of, args.uniform)
        print(
            f"| {r['model']} | {r['structures']} | {r['units']:,} | {r['attach_s']:.2f} s | "
            f"{r['penalty_step_ms']:.1f} ms | {r['select_s'] * 1e3:.0f} ms | {r['stats_s'] * 1e3:.0f} ms | "
            f"{r['plan_s']:.2f} s | "
            f"{r['exact_sparsity']:.4f} (target {args.target}) |"
        )


if __name__ == "__main__":
    main()

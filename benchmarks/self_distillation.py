"""Self-distillation "for free": memory and held-out loss of ``distill_weight`` against the alternatives.

1. Memory of one training step of a LoRA Llama under gates, each variant in a fresh process: no distillation,
   self-distillation (the same weights with gates and adapters off), and the usual deep-copied teacher.
   Reported: parameter bytes the teacher adds, and the peak RSS growth over the model already in memory.
2. Held-out loss of the compact model after pruning a "pretrained" tiny Llama (second-order Markov chain task,
   ``tests/distill_task.py``) to 50% with and without distillation, same seeds, data and steps.
   The full run adds more seeds and full fine-tuning without LoRA, where the teacher is the *current*
   ungated weights and so moves with training.

    python benchmarks/self_distillation.py --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from _common import interleaved_median, llama, lora, param_bytes

import lightning_prune as lp
from lightning_prune.distill import kl_distillation

TESTS = Path(__file__).resolve().parent.parent / "tests"
VARIANTS = ("none", "self", "deepcopy")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_step(variant: str, quick: bool):
    """A model, pruner and one-step closure for ``variant``.

    Returns (step, teacher parameter bytes, RSS right after the base model is built: the baseline of the memory
    table, so that a deep-copied teacher counts).
    """
    shape = (
        dict(hidden=256, layers=4, ffn=688, vocab=8000) if quick else dict(hidden=512, layers=6, ffn=1376, vocab=16000)
    )
    base = llama(**shape).train()
    start = rss_bytes()
    teacher = None
    extra = 0
    if variant == "deepcopy":
        teacher = copy.deepcopy(base).eval().requires_grad_(False)
        extra = param_bytes(teacher)
    model = lora(base)
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.5, distill_weight=1.0 if variant == "self" else 0.0))
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-4))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab"], (4, 64), generator=gen)

    def step() -> None:
        out = model(input_ids=ids, labels=ids)
        loss = out.loss + pruner.penalty()
        if teacher is not None:
            with torch.no_grad():
                target = teacher(input_ids=ids).logits
            loss = loss + kl_distillation(out.logits, target, 2.0)
        loss.backward()
        optimizer.step()
        pruner.step()
        optimizer.zero_grad()

    return step, extra, start


def memory_child(variant: str, quick: bool) -> None:
    torch.set_num_threads(1)
    step, extra, start = make_step(variant, quick)
    step()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"variant": variant, "teacher_param_bytes": extra, "peak_rss_growth": peak - start}))


def memory_table(quick: bool) -> dict[str, dict]:
    rows = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--memory-child", variant] + (["--quick"] if quick else [])
        out = subprocess.run(
            cmd, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def step_time_ratio(quick: bool) -> float:
    torch.set_num_threads(1)
    plain, _, _ = make_step("none", True)
    distilled, _, _ = make_step("self", True)
    times = interleaved_median({"none": plain, "self": distilled}, repeats=3 if quick else 10, warmup=1)
    return times["self"] / times["none"]


def heldout_table(seeds: list[int], use_lora: bool) -> tuple[list[float], list[float]]:
    sys.path.insert(0, str(TESTS))
    from distill_task import chain, pretrain, prune_once, sample

    table = chain()
    train, test = sample(table, 2048, seed=1), sample(table, 256, seed=2)
    state = pretrain(train, steps=400)
    plain, distilled = [], []
    for seed in seeds:
        plain.append(prune_once(state, train[:256], test, 0.0, seed, use_lora=use_lora)[0])
        distilled.append(prune_once(state, train[:256], test, 1.0, seed, use_lora=use_lora)[0])
    return plain, distilled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.memory_child:
        memory_child(args.memory_child, args.quick)
        return
    torch.set_num_threads(1)

    rows = memory_table(args.quick)
    print("== memory of two training steps (LoRA Llama, gates on heads+ffn; fresh process each) ==")
    print(f"{'teacher':>10} {'teacher param MB':>17} {'peak RSS growth MB':>19}")
    for variant, row in rows.items():
        print(f"{variant:>10} {row['teacher_param_bytes'] / 2**20:17.1f} {row['peak_rss_growth'] / 2**20:19.1f}")
    print(f"step time, self-distillation / none: {step_time_ratio(args.quick):.2f}x (one extra no-grad forward)")

    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    settings = [("LoRA (teacher = frozen base)", True)] + ([] if args.quick else [("full fine-tune (moving)", False)])
    print("== held-out loss of the 50%-pruned compact model (2nd-order Markov task, same seeds/steps) ==")
    for label, use_lora in settings:
        plain, distilled = heldout_table(seeds, use_lora)
        print(f"{label}: per seed none={[round(x, 4) for x in plain]} distill={[round(x, 4) for x in distilled]}")
        print(
            f"{label}: mean held-out loss without distillation {statistics.mean(plain):.4f}, "
            f"with distill_weight=1 {statistics.mean(distilled):.4f}"
        )


if __name__ == "__main__":
    main()

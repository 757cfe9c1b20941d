"""Issue #18 diagnostics on the quality benchmark's task (MiniLM-L6, ``benchmarks/quality.py``'s data and budgets).

``--trace``: one L0 run with the callback, printing the schedule's target, the gates' expected sparsity, the exact
sparsity of the deterministic masks and λ every 5 steps: whether the gates follow the target or the exact-target
cut at the freeze does the pruning. ``--restart``: dense fine-tuning cut into two ``fit`` calls at the two-stage
baseline's pruning step, as the baseline cuts it (``quality.fit_after_cut``: a fresh optimizer, the same batch
order; no pruning): how much of two-stage's lead over dense is the restart.

    python benchmarks/quality_diagnostics.py --trace --quick --seed 2 --gate-lr 0.1 --lagrangian-lr 0.01
    python benchmarks/quality_diagnostics.py --restart --seed 0
"""

from __future__ import annotations

import argparse
import logging
import warnings

import quality as q
import torch

import lightning_prune as lp


def trace(cfg: q.BenchConfig, model_fn, task: q.Task, gate_lr: float, lagrangian_lr: float) -> None:
    from lightning.pytorch.callbacks import Callback

    config = q._l0_variant(warmup=0.3, init_from_importance=True, gate_lr=gate_lr, lagrangian_lr=lagrangian_lr)(
        0.5, cfg
    )
    callback = lp.PruningCallback(
        config,
        dense_steps=max(1, int(cfg.steps * 0.1)),
        freeze_after_steps=max(2, int(cfg.steps * 0.5)),
        plot=False,
        log_stats=False,
        prog_bar=False,
        seed=cfg.seed,
    )
    keys = ("target_sparsity", "expected_sparsity", "exact_sparsity", "lambda_1")

    class Trace(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step % 5 == 0:
                stats = callback.pruner.stats()
                values = " ".join(f"{k}={float(stats[k]):.3f}" for k in keys if k in stats)
                print(f"step {trainer.global_step:4d} {callback.phase:6s} {values}", flush=True)

    torch.manual_seed(cfg.seed)
    model = q.fit(model_fn(), task, cfg, cfg.steps, [callback, Trace()])
    print(f"accuracy of the export: {q.accuracy(callback.pruner.export(), task.test):.3f}")
    del model


def restart(cfg: q.BenchConfig, model_fn, task: q.Task) -> None:
    torch.manual_seed(cfg.seed)
    model = model_fn()
    first = int(cfg.steps * cfg.prune_at)
    q.fit(model, task, cfg, first)
    q.fit_after_cut(model, task, cfg)
    print(f"dense with a second fit at step {first} (seed {cfg.seed}): accuracy {q.accuracy(model, task.test):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--trace", action="store_true")
    mode.add_argument("--restart", action="store_true")
    parser.add_argument("--quick", action="store_true", help="the quick budget (100 steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gate-lr", type=float, default=0.1)
    parser.add_argument("--lagrangian-lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import lightning.pytorch  # noqa: F401 - configures its logger on import; quieten it afterwards

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    if args.quick:
        cfg, n_train, n_test = q.BenchConfig(steps=100, max_length=32), 200, 50
    else:
        cfg, n_train, n_test = q.BenchConfig(steps=300, max_length=40), 500, 125
    cfg.seed = args.seed
    model_fn, task = q.minilm_task(cfg, n_train, n_test)
    if args.trace:
        trace(cfg, model_fn, task, args.gate_lr, args.lagrangian_lr)
    else:
        restart(cfg, model_fn, task)


if __name__ == "__main__":
    main()

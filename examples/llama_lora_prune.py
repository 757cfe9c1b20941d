"""Fine-tune a Llama-family model with peft LoRA and prune it in the same run with PruningCallback.

    python examples/llama_lora_prune.py                       # a tiny Llama built from a config: < 1 min on CPU
    python examples/llama_lora_prune.py --model /path/to/llama --text-file corpus.txt --steps 2000

The LightningModule below is an ordinary LoRA fine-tune: its ``training_step`` returns the LM loss and its
``configure_optimizers`` passes ``self.parameters()``. The callback attaches hard-concrete gates to heads and
FFN channels, adds the Lagrangian penalty to the loss, gives the gates their own optimizer groups, and at the
end writes a compact model (LoRA merged, pruned units removed, checked against the gated model), its report and
a plot of the kept units to ``--output``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import lightning as L
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader, TensorDataset

import lightning_prune as lp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoRAFineTune(L.LightningModule):
    """A plain LoRA fine-tune: nothing here knows about pruning."""

    def __init__(self, model: torch.nn.Module, lr: float) -> None:
        super().__init__()
        self.model = model
        self.lr = lr

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        loss = self.model(input_ids=ids, labels=ids).loss
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def build_model(path: str | None) -> torch.nn.Module:
    import transformers

    if path:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    else:  # a tiny Llama with GQA: 2 layers, 8 query heads in 4 KV groups, 96 FFN channels
        config = transformers.LlamaConfig(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=16,
            vocab_size=128,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
        model = transformers.AutoModelForCausalLM.from_config(config)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, lora_dropout=0.0))
    model.print_trainable_parameters()
    return model.train()  # from_pretrained returns eval mode; gates are sampled only in training mode


def build_data(args: argparse.Namespace, vocab_size: int) -> TensorDataset:
    if args.text_file:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        ids = tokenizer(Path(args.text_file).read_text(), return_tensors="pt").input_ids[0]
        usable = (len(ids) // args.seq_len) * args.seq_len
        if usable == 0:
            raise SystemExit(f"{args.text_file} has fewer than --seq-len={args.seq_len} tokens.")
        return TensorDataset(ids[:usable].view(-1, args.seq_len))
    from lightning_prune.integrations.modules import motif_tokens

    return TensorDataset(motif_tokens(256, args.seq_len, min(vocab_size, 128), seed=args.seed))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="local Llama-family model directory; default: a tiny Llama from a config")
    parser.add_argument("--text-file", help="training text (needs --model for its tokenizer); default: synthetic")
    parser.add_argument("--target-sparsity", type=float, default=0.4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("outputs/llama_lora_prune"))
    args = parser.parse_args(argv)
    if args.text_file and not args.model:
        parser.error("--text-file needs --model (its tokenizer)")

    L.seed_everything(args.seed, verbose=False)
    model = build_model(args.model)
    loader = DataLoader(build_data(args, model.config.vocab_size), batch_size=args.batch_size, shuffle=True)
    callback = lp.PruningCallback(
        lp.L0Config(
            target_sparsity=args.target_sparsity,
            structures=("heads", "ffn"),
            warmup_steps=int(args.steps * 0.3),  # CoFi's linear target warm-up
            init_log_alpha=1.0,
            gate_lr=0.1,
            lagrangian_lr=0.05,
        ),
        export_dir=args.output / "compact",
        overwrite_export=True,
        dense_steps=int(args.steps * 0.05),  # a short LoRA warm-up before the gates move
        freeze_after_steps=int(args.steps * 0.85),  # then fine-tune with the final architecture
    )
    trainer = L.Trainer(
        max_steps=args.steps,
        accelerator="auto",
        devices=1,
        logger=L.pytorch.loggers.CSVLogger(args.output, name="logs"),
        callbacks=[callback],
        enable_checkpointing=False,
        log_every_n_steps=20,
    )
    start = time.perf_counter()
    trainer.fit(LoRAFineTune(model, args.lr), loader)
    report = callback.pruner.last_report
    print(f"\nfinished in {time.perf_counter() - start:.1f}s: {report.summary()}")
    print(f"compact model, report and kept_units.png in {args.output / 'compact'}")
    return args.output / "compact"


if __name__ == "__main__":
    main()

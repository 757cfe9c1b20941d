"""Shared fixtures: tiny seeded models built from configs (no download), with or without peft LoRA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
torch.set_num_threads(1)  # tiny models: more threads only add contention


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on one intra-op thread (a test that changes it cannot slow the next): tiny models on a
    shared 2-core machine run 20-100x slower with two threads (OpenMP spinning)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def tiny_config(family: str = "llama", **overrides):
    """A tiny decoder config with GQA (8 query heads sharing 4 KV heads) and an explicit head_dim."""
    import transformers

    cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
        "phi3": transformers.Phi3Config,
    }[family]
    values = dict(
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
    values.update(overrides)
    return cls(**values)


def tiny_causal_lm(family: str = "llama", seed: int = 0, **overrides):
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family, **overrides))
    return model.float().eval()


def tiny_phi3(cls_name: str = "Phi3ForCausalLM", seed: int = 0, **overrides):
    """A tiny Phi-3 (fused qkv_proj / gate_up_proj) of class ``cls_name``, with :func:`tiny_config`'s sizes."""
    import transformers

    torch.manual_seed(seed)
    config = tiny_config("phi3", **{"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **overrides})
    return getattr(transformers, cls_name)(config).float().eval()


PHI3_LORA_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
LLAMA_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def with_lora(model, seed: int = 1, targets=LLAMA_LORA_TARGETS):
    """Wrap with peft LoRA on every projection and give B non-zero values, so LoRA changes the function."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return peft_model


def randomize_gates(pruner, seed: int = 0, std: float = 3.0) -> None:
    """Spread the gate scores so deterministic masks prune a random, non-trivial subset.

    Also turns off ``match_target`` so the learned counts (not the config's target) decide the masks.
    """
    pruner.config.match_target = False
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in pruner.gates.values():
            for p in gate.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * std)


@pytest.fixture
def llama():
    return tiny_causal_lm("llama")


def run_without_lightning_prune(script: str, args: list[str], cwd) -> object:
    """Run ``script`` in an isolated interpreter (``python -I``: no site-packages path tricks, no user env) in ``cwd``,
    offline and single-threaded, where lightning_prune cannot be imported unless the script makes it so; returns the
    JSON of its last output line. Used to check that exports load as a user without lightning-prune loads them."""
    import json
    import subprocess
    import sys

    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PATH": "/usr/bin:/bin",
        "HF_MODULES_CACHE": str(Path(cwd) / "hf_modules"),
        "OMP_NUM_THREADS": "1",
    }
    run = subprocess.run(
        [sys.executable, "-I", "-c", script, *args], capture_output=True, text=True, env=env, cwd=str(cwd), timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def run_gloo_processes(command: list[str], env: dict, before_retry=None):
    """Run a program that spawns gloo ranks (``subprocess.run``, output captured, 300 s); a rank killed by a signal
    (gloo aborting a thread: "terminate called without an active exception", seen in CI dry runs on 2 cores,
    2026-11-29 and 2026-11-30) is retried once, after ``before_retry()`` (e.g. emptying an output folder the killed run
    wrote to). A failure inside the program's own checks is not retried, and a signal twice in a row fails."""
    import subprocess

    for attempt in range(2):
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        if result.returncode == 0 or "terminated with signal" not in result.stderr or attempt == 1:
            return result
        if before_retry is not None:
            before_retry()
    return result

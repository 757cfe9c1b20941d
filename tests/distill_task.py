"""A small language-modelling task on which pruning hurts and a teacher knows more than the labels.

Tokens follow a random **second-order** Markov chain (the next token depends on the previous two), so a model
needs attention (not just bigram statistics in the embeddings) and pruning half of the heads and FFN channels
costs held-out loss. The labels are samples from the chain, the teacher's soft predictions approximate the
whole next-token distribution: the setting where distillation (Hinton et al. 2015) is expected to help.
Shared by ``tests/test_self_distillation.py`` and ``benchmarks/self_distillation.py``.
"""

from __future__ import annotations

import torch

import lightning_prune as lp

VOCAB, SEQ_LEN = 24, 16
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def chain(vocab: int = VOCAB, sharpness: float = 2.0, seed: int = 0) -> torch.Tensor:
    """``P[a, b, c] = p(next = c | previous two = a, b)``: softmax of scaled Gaussian logits."""
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(vocab, vocab, vocab, generator=gen) * sharpness, -1)


def sample(table: torch.Tensor, num: int, seq_len: int = SEQ_LEN, seed: int = 1) -> torch.Tensor:
    """``(num, seq_len)`` token ids drawn from the chain (the first two tokens uniform)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = table.shape[0]
    ids = torch.empty(num, seq_len, dtype=torch.long)
    ids[:, :2] = torch.randint(0, vocab, (num, 2), generator=gen)
    for t in range(2, seq_len):
        ids[:, t] = torch.multinomial(table[ids[:, t - 2], ids[:, t - 1]], 1, generator=gen)[:, 0]
    return ids


def tiny_llama(seed: int = 0, vocab: int = VOCAB, hidden: int = 64, ffn: int = 128):
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=hidden // 4,
        vocab_size=vocab,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(config).float()


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, data: torch.Tensor) -> float:
    was = model.training
    model.eval()
    loss = float(model(input_ids=data, labels=data).loss)
    model.train(was)
    return loss


def pretrain(train: torch.Tensor, steps: int, seed: int = 0, batch: int = 32, lr: float = 3e-3) -> dict:
    """The "pretrained" model: a tiny Llama trained on the chain; returns its state dict."""
    model = tiny_llama(seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = train[torch.randint(0, len(train), (batch,), generator=gen)]
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {k: v.clone() for k, v in model.state_dict().items()}


def prune_once(
    state: dict,
    train: torch.Tensor,
    test: torch.Tensor,
    distill_weight: float,
    seed: int,
    steps: int = 150,
    use_lora: bool = True,
    batch: int = 16,
    lr: float = 1e-3,
    target_sparsity: float = 0.5,
) -> tuple[float, float]:
    """Prune the pretrained model (LoRA + L0 gates over heads and FFN) and return the compact model's held-out loss
    and exact sparsity. Everything but ``distill_weight`` is identical across calls with the same ``seed``."""
    model = tiny_llama()
    model.load_state_dict(state)
    model.train()
    if use_lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, lora_dropout=0.0))
    config = lp.L0Config(
        target_sparsity=target_sparsity,
        structures=("heads", "ffn"),
        warmup_steps=steps // 2,
        init_log_alpha=2.0,
        distill_weight=distill_weight,
    )
    pruner = lp.attach(model, config)
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=lr))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for _ in range(steps):
        ids = train[torch.randint(0, len(train), (batch,), generator=gen)]
        loss = model(input_ids=ids, labels=ids).loss + pruner.penalty()
        loss.backward()
        optimizer.step()
        pruner.step()
        optimizer.zero_grad()
    compact = pruner.export()
    return heldout_loss(compact, test), pruner.last_report.exact_sparsity

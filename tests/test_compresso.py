"""Compresso (Guo et al. 2023): frozen base + LoRA + L0 masks, and the collaborative prompt.

The prompt must carry no loss and be applied identically by the training and the evaluation data path; the
LoRA-trained, masked model must export to a compact model that computes what the gated one computed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_causal_lm, with_lora
from torch.utils.data import DataLoader

import lightning_prune as lp
from lightning_prune.errors import PruningConfigError, UnsupportedModelError
from lightning_prune.methods.compresso import IGNORE_INDEX, CollaborativePrompt, CompressoConfig

PROMPT_IDS = [1, 17, 23, 42, 99, 7]
QV = ("q_proj", "v_proj")  # Compresso's LoRA targets


def _examples(n: int = 6, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(2, 128, (10,), generator=gen)
        labels = ids.clone()
        labels[:3] = IGNORE_INDEX  # an "instruction" part of the example without loss, as in Alpaca data
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def _causal_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """HF's causal-LM loss: position i predicts token i + 1; ``-100`` is ignored."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def test_prompt_tokens_carry_no_loss():
    prompt = CollaborativePrompt(PROMPT_IDS)
    p = len(prompt)
    batch = prompt.wrap_collate()(_examples(4))
    assert batch["input_ids"].shape == (4, p + 10)
    assert batch["input_ids"][:, :p].tolist() == [PROMPT_IDS] * 4
    assert (batch["labels"][:, :p] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][:, :p] == 1).all()
    model = tiny_causal_lm("llama")
    with torch.no_grad():
        out = model(**batch)
    logits, labels = out.logits, batch["labels"]
    assert torch.allclose(out.loss, _causal_loss(logits, labels), atol=1e-5)
    # the loss on the example's own targets only: logits at P-1+j predict example token j
    example_labels = batch["labels"][:, p:]
    only_example = F.cross_entropy(
        logits[:, p - 1 : -1].flatten(0, 1), example_labels.flatten(), ignore_index=IGNORE_INDEX
    )
    assert torch.allclose(out.loss, only_example, atol=1e-5)
    # logits at prompt positions (predicting prompt tokens) do not matter ...
    noisy = logits.clone()
    noisy[:, : p - 1] += 10.0 * torch.randn_like(noisy[:, : p - 1])
    assert torch.allclose(_causal_loss(noisy, labels), out.loss, atol=1e-5)
    # ... nor would any label the prompt had been given: the helper overwrites them with -100
    relabelled = dict(_examples(4)[0])
    stacked = {k: torch.stack([e[k] for e in _examples(4)]) for k in relabelled}
    assert (prompt.apply(stacked)["labels"][:, :p] == IGNORE_INDEX).all()
    # while the example's logits do (the check can fail)
    noisy = logits.clone()
    noisy[:, p + 4] += 10.0 * torch.randn_like(noisy[:, p + 4])
    assert not torch.allclose(_causal_loss(noisy, labels), out.loss, atol=1e-3)


def test_same_prompt_in_training_and_evaluation_data_paths():
    import lightning as L

    prompt = CollaborativePrompt(PROMPT_IDS)
    collate = prompt.wrap_collate()
    train_set, val_set = _examples(4, seed=0), _examples(4, seed=1)

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(train_set, batch_size=2, collate_fn=collate)

        def val_dataloader(self):
            return DataLoader(val_set, batch_size=2, collate_fn=collate)

    data = Data()
    for loader, source in ((data.train_dataloader(), train_set), (data.val_dataloader(), val_set)):
        batch = next(iter(loader))
        assert batch["input_ids"][:, : len(prompt)].tolist() == [PROMPT_IDS] * 2
        assert torch.equal(prompt.strip(batch["input_ids"]), torch.stack([e["input_ids"] for e in source[:2]]))
    # position ids, when given, continue after the prompt
    out = prompt.apply({"input_ids": torch.zeros(1, 3, dtype=torch.long), "position_ids": torch.arange(3)[None]})
    assert out["position_ids"].tolist() == [list(range(len(prompt) + 3))]


def test_prompt_from_tokenizer_uses_the_paper_instruction():
    calls = []

    def tokenizer(text, add_special_tokens=True):
        calls.append(text)
        return {"input_ids": [1] + [ord(c) % 100 + 2 for c in text[:20]]}

    prompt = CollaborativePrompt.from_tokenizer(tokenizer)
    assert "pruning" in calls[0] and len(prompt) == 21


def _attach(model, **kwargs):
    config = CompressoConfig(target_sparsity=0.3, warmup_steps=5, **kwargs)
    return lp.attach(model, config)


def test_lora_and_masks_export_to_a_compact_model_equal_to_the_gated_one():
    torch.manual_seed(0)
    model = with_lora(tiny_causal_lm("llama"), targets=QV).train()
    pruner = _attach(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("pruning_gates") for n in trainable)
    prompt = CollaborativePrompt(PROMPT_IDS)
    loader = DataLoader(_examples(8), batch_size=2, collate_fn=prompt.wrap_collate())
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-2))
    pruner.hook_optimizer(optimizer)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    for _ in range(3):
        for batch in loader:
            loss = model(**batch).loss + pruner.penalty()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if "lora_B" in n)
    # prune a non-trivial subset so that the export really removes units of every structure
    with torch.no_grad():
        for gate in pruner.gates.values():
            for p in gate.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)) * 3.0)
    model.eval()
    compact = pruner.export()
    masks = pruner.deterministic_masks()
    assert all(float(m.sum()) < m.numel() for m in masks.values())
    assert not any("lora" in n for n, _ in compact.named_parameters())
    batch = prompt.apply({"input_ids": torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(9))})
    with torch.no_grad():
        gated = model(**batch).logits
        small = compact(**batch).logits
    assert (gated - small).abs().max() < 1e-4 * max(gated.abs().max().item(), 1.0)
    assert sum(p.numel() for p in compact.parameters()) < sum(
        p.numel() for n, p in model.named_parameters() if "lora_" not in n and not n.startswith("pruning_gates")
    )


def test_finetune_stage_keeps_masks_fixed_and_trains_lora():
    torch.manual_seed(0)
    model = with_lora(tiny_causal_lm("llama"), targets=QV).train()
    pruner = _attach(model)
    pruner.set_phase("frozen")
    pruner.step()  # clamps log α into [−4.6, 4.6] (the init has a little noise); then nothing may move them
    gates_before = [p.detach().clone() for p in pruner.gate_parameters()]
    masks_before = {k: v.clone() for k, v in pruner.deterministic_masks().items()}
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-2))
    pruner.hook_optimizer(optimizer)
    batch = CollaborativePrompt(PROMPT_IDS).wrap_collate()(_examples(2))
    lora = next(p for n, p in model.named_parameters() if "lora_B" in n)
    lora_before = lora.detach().clone()
    for _ in range(2):
        loss = model(**batch).loss + pruner.penalty()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(gates_before, pruner.gate_parameters()))
    assert all(torch.equal(masks_before[k], v) for k, v in pruner.deterministic_masks().items())
    assert not torch.equal(lora_before, lora)


def test_paper_defaults():
    config = CompressoConfig()
    assert config.target_sparsity == 0.3
    assert config.structures == ("heads", "ffn", "hidden")
    assert config.init_log_alpha == pytest.approx(4.595, abs=1e-3)
    assert config.gate_lr == 0.1 and config.lagrangian_lr == 0.1
    assert lp.methods.method_config_class("compresso") is CompressoConfig


def test_model_without_lora_is_refused():
    model = tiny_causal_lm("llama")
    with pytest.raises(UnsupportedModelError, match="get_peft_model"):
        _attach(model)
    assert not hasattr(model, "pruning_gates")


def test_trainable_base_is_refused_unless_allowed():
    model = with_lora(tiny_causal_lm("llama"), targets=QV)
    model.base_model.model.lm_head.weight.requires_grad_(True)
    with pytest.raises(UnsupportedModelError, match="require_frozen_base=False"):
        _attach(model)
    assert _attach(model, require_frozen_base=False) is not None


@pytest.mark.parametrize(("token_ids", "message"), [([], "non-empty"), ([1, -2], "non-negative"), (["a"], "token ids")])
def test_bad_prompt_is_refused(token_ids, message):
    with pytest.raises(PruningConfigError, match=message):
        CollaborativePrompt(token_ids)


def test_prompt_refuses_batches_it_cannot_extend():
    prompt = CollaborativePrompt(PROMPT_IDS)
    with pytest.raises(PruningConfigError, match="2-D `input_ids`"):
        prompt.apply({"input_ids": torch.zeros(5, dtype=torch.long)})
    with pytest.raises(PruningConfigError, match="'token_type_ids'"):
        prompt.apply({"input_ids": torch.zeros(1, 4, dtype=torch.long), "token_type_ids": torch.zeros(1, 4)})

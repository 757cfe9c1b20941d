"""Models and runs the library must refuse early and clearly: quantized bases, tied embeddings
under hidden-dim pruning (supported: checked exact), missing config fields, and NaN losses in the training
integrations (stopped with the step named, before the gates are updated)."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import randomize_gates, tiny_causal_lm, tiny_config
from lightning_helpers import LitLM, loader, trainer

import lightning_prune as lp


def test_quantized_base_is_refused_at_attach():
    model = tiny_causal_lm("llama")
    model.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    with pytest.raises(lp.UnsupportedModelError, match=r"quantized.*bf16/fp32.*quantize the compact export"):
        lp.attach(model, lp.L0Config())
    assert not hasattr(model, "pruning_gates"), "nothing may be attached to a refused model"


def test_integer_weights_are_refused_at_attach():
    model = tiny_causal_lm("llama")
    layer = model.model.layers[0].mlp
    packed = torch.nn.Parameter(torch.zeros(4, 4, dtype=torch.int8), requires_grad=False)
    layer.register_parameter("qweight", packed)  # as GPTQ/AWQ layers store packed integer weights
    with pytest.raises(lp.UnsupportedModelError, match=r"integer weight `model.layers.0.mlp.qweight`"):
        lp.attach(model, lp.L0Config())


def test_missing_config_field_is_named():
    """A remote-code style config with the family's model_type but without a field the adapter reads."""
    from types import SimpleNamespace

    model = tiny_causal_lm("llama")
    values = {k: v for k, v in model.config.to_dict().items() if k != "intermediate_size"}
    object.__setattr__(model, "config", SimpleNamespace(**values))  # transformers 5 configs refuse the deletion
    with pytest.raises(lp.UnsupportedModelError, match="intermediate_size"):
        lp.attach(model, lp.L0Config())


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tied_embeddings_with_hidden_pruning_export_exactly(family):
    """Tied input/output embeddings are supported: the shared matrix is sliced once and stays tied."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family, tie_word_embeddings=True)).eval()
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=("hidden", "ffn")))
    randomize_gates(pruner, seed=2)
    compact = pruner.export()
    assert compact.lm_head.weight.data_ptr() == compact.model.embed_tokens.weight.data_ptr()
    assert compact.config.hidden_size < 64
    assert sum(p.numel() for p in compact.parameters()) == pruner.last_report.params_after


class NaNAfter(LitLM):
    """Returns a NaN loss from the given step on (a diverging run)."""

    def __init__(self, model, nan_step: int) -> None:
        super().__init__(model)
        self.nan_step = nan_step

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step >= self.nan_step else loss


def test_nan_task_loss_stops_lightning_with_the_step_before_the_gates_change():
    callback = lp.PruningCallback(lp.L0Config(target_sparsity=0.3))
    module = NaNAfter(tiny_causal_lm("llama").train(), nan_step=3)
    run = trainer(10, [callback])
    with pytest.raises(lp.NonFiniteError, match=r"`training_step` is nan at global step 3"):
        run.fit(module, loader())
    assert all(torch.isfinite(p).all() for p in callback.pruner.state.parameters())


def test_nan_task_loss_stops_the_hf_trainer(tmp_path):
    from lightning_prune.integrations.hf_trainer import PruningTrainer, PruningTrainerCallback

    ids = torch.randint(0, 128, (8, 12), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "labels": row} for row in ids]
    callback = PruningTrainerCallback(lp.L0Config(target_sparsity=0.3))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, report_to=[], use_cpu=True
    )
    model = tiny_causal_lm("llama").train()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")  # every logit row, hence the loss, is NaN
    trainer_ = PruningTrainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    with pytest.raises(lp.NonFiniteError, match=r"training loss is nan at global step 0"):
        trainer_.train()

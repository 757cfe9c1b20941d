"""A ready-made causal-LM ``LightningModule`` and a synthetic ``LightningDataModule`` for the CLI and examples.

:class:`CausalLMModule` builds a Hugging Face causal LM from a local path or from a config dict (so tests and
examples need no download), optionally wraps it with peft LoRA, and trains it with the LM loss. Its
``training_step`` knows nothing about pruning: :class:`~lightning_prune.PruningCallback` adds the penalty.

:class:`SyntheticTokensDataModule` serves random token sequences made of a repeated motif, so the loss can
fall and the gates see a real task signal without any data set.

Example (YAML for ``lightning-prune fit --config``)::

    model:
      class_path: lightning_prune.integrations.modules.CausalLMModule
      init_args:
        model_config: {model_type: llama, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2,
                       num_attention_heads: 8, num_key_value_heads: 4, head_dim: 16, vocab_size: 128}
    data:
      class_path: lightning_prune.integrations.modules.SyntheticTokensDataModule
      init_args: {vocab_size: 128, seq_len: 16}
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune.errors import PruningConfigError


def build_causal_lm(
    model_name_or_path: str | None = None,
    model_config: dict[str, Any] | None = None,
    lora: dict[str, Any] | None = None,
    seed: int = 0,
) -> torch.nn.Module:
    """A causal LM from a local path (``from_pretrained``) or a config dict (``from_config``, seeded init).

    Args:
        model_name_or_path: a directory with ``config.json`` and weights (or a hub id when online).
        model_config: keyword arguments of ``transformers.AutoConfig.for_model``; must include ``model_type``.
        lora: keyword arguments of ``peft.LoraConfig`` (e.g. ``{"r": 8, "target_modules": ["q_proj", "v_proj"]}``);
            ``None`` trains all weights.
        seed: seed of the random initialisation when building from a config.

    Raises:
        PruningConfigError: neither or both of ``model_name_or_path`` and ``model_config`` were given.
    """
    import transformers

    if (model_name_or_path is None) == (model_config is None):
        raise PruningConfigError(
            "Give exactly one of `model_name_or_path` (a local model directory) and `model_config` (a dict with "
            f"`model_type` and sizes); got model_name_or_path={model_name_or_path!r}, model_config={model_config!r}."
        )
    if model_name_or_path is not None:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_name_or_path, torch_dtype=torch.float32)
    else:
        values = dict(model_config)
        model_type = values.pop("model_type", None)
        if model_type is None:
            raise PruningConfigError(f"`model_config` needs a `model_type` such as 'llama', got keys {sorted(values)}.")
        config = transformers.AutoConfig.for_model(model_type, **values)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = transformers.AutoModelForCausalLM.from_config(config)
    model = model.float()
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(**lora))
    return model.train()  # from_pretrained returns eval mode; training must sample the gates


class CausalLMModule(pl.LightningModule):
    """Train a causal LM with its own LM loss (``labels = input_ids``) and AdamW over ``self.parameters()``.

    Args:
        model_name_or_path: local model directory (see :func:`build_causal_lm`).
        model_config: config dict with ``model_type`` for a randomly initialised model.
        lora: ``peft.LoraConfig`` keyword arguments, or ``None`` for full fine-tuning.
        lr: AdamW learning rate of the model's trainable parameters.
        weight_decay: AdamW weight decay (the pruning gates get none: the callback regroups them).
        seed: initialisation seed when building from ``model_config``.

    Example::

        module = CausalLMModule(model_config={"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                                              "num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 128})
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        lora: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise PruningConfigError(f"`lr` must be positive, got {lr!r}.")
        if weight_decay < 0:
            raise PruningConfigError(f"`weight_decay` must be >= 0, got {weight_decay!r}.")
        self.save_hyperparameters()
        self.model = build_causal_lm(model_name_or_path, model_config, lora, seed)
        self.lr = lr
        self.weight_decay = weight_decay

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        input_ids = batch[0] if isinstance(batch, (list, tuple)) else batch
        loss = self.model(input_ids=input_ids, labels=input_ids).loss
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        input_ids = batch[0] if isinstance(batch, (list, tuple)) else batch
        loss = self.model(input_ids=input_ids, labels=input_ids).loss
        self.log("val_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


def motif_tokens(num_samples: int, seq_len: int, vocab_size: int, motif_len: int = 4, seed: int = 0) -> torch.Tensor:
    """``(num_samples, seq_len)`` token ids: a random motif of ``motif_len`` tokens repeated along each row."""
    generator = torch.Generator().manual_seed(seed)
    motifs = torch.randint(0, vocab_size, (num_samples, motif_len), generator=generator)
    reps = -(-seq_len // motif_len)
    return motifs.repeat(1, reps)[:, :seq_len].contiguous()


class SyntheticTokensDataModule(pl.LightningDataModule):
    """Random repeated-motif token sequences (the model can learn to continue a motif), no download.

    Args:
        vocab_size: token ids are drawn from ``[0, vocab_size)``; must not exceed the model's vocabulary.
        seq_len: tokens per sequence.
        num_samples: training sequences (validation uses a quarter as many, from another seed).
        batch_size: sequences per batch.
        seed: data seed.
    """

    def __init__(
        self, vocab_size: int = 128, seq_len: int = 16, num_samples: int = 64, batch_size: int = 8, seed: int = 0
    ) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("seq_len", seq_len), ("num_samples", num_samples)):
            if not isinstance(value, int) or value < 1:
                raise PruningConfigError(f"`{name}` must be a positive int, got {value!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise PruningConfigError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        data = motif_tokens(self.num_samples, self.seq_len, self.vocab_size, seed=self.seed)
        return DataLoader(TensorDataset(data), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        data = motif_tokens(max(1, self.num_samples // 4), self.seq_len, self.vocab_size, seed=self.seed + 1)
        return DataLoader(TensorDataset(data), batch_size=self.batch_size)

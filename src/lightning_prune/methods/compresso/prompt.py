"""Compresso's collaborative prompt: tell the model it is being pruned, in training and evaluation alike.

Guo et al. 2023 (Compresso, §3.3) prepend a pruning-aware system instruction to every example so that the LLM
"collaborates" with the pruning algorithm. Two things must hold for it to be a prompt and not training data:

1. its tokens carry no loss (their labels are ``-100``, the ignore index of every HF causal-LM loss);
2. it is applied *identically* when training and when evaluating (the reference code prepends the same text at
   inference); otherwise the pruned model is evaluated off the distribution it was trained on.

:class:`CollaborativePrompt` does both through one function, :meth:`CollaborativePrompt.apply`, which the
collate wrapper (:meth:`CollaborativePrompt.wrap_collate`) calls for training and evaluation data loaders alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_prune.errors import PruningConfigError

#: Ignore index of the HF (and torch) cross-entropy: positions with this label add nothing to the loss.
IGNORE_INDEX = -100

#: The pruning-aware instruction, paraphrasing the paper's "collaborative prompt" (Compresso, §3.3).
PRUNING_PROMPT = (
    "###System Instruction: Attention, language model! You are being optimized by a structured pruning "
    "algorithm that removes some of your attention heads, feed-forward channels and hidden dimensions. "
    "The goals are: improved efficiency (faster inference), better resource utilization (less memory), "
    "maintaining quality (answers as good as before), and iterative refinement (the pruning proceeds step by "
    "step). Please collaborate: keep the important knowledge in the parts that remain and keep learning as the "
    "pruning continues. Together we will build a leaner and more efficient version of you.\n\n"
)

_KNOWN = ("input_ids", "attention_mask", "labels", "position_ids")


@dataclass
class CollaborativePrompt:
    """A fixed token prefix prepended to every example, excluded from the loss.

    Args:
        token_ids: the prompt's token ids (put the BOS token here if the model expects one, and tokenize the
            examples without it: the prompt becomes the start of every sequence).

    Example::

        prompt = CollaborativePrompt.from_tokenizer(tokenizer)           # the paper's instruction
        collate = prompt.wrap_collate(DataCollatorForLanguageModeling(tokenizer, mlm=False))
        train = DataLoader(train_set, collate_fn=collate)                 # training ...
        val = DataLoader(val_set, collate_fn=collate)                     # ... and evaluation: same prompt

        class Data(L.LightningDataModule):                               # in a LightningDataModule
            def train_dataloader(self):
                return DataLoader(train_set, collate_fn=collate)
            def val_dataloader(self):
                return DataLoader(val_set, collate_fn=collate)
    """

    token_ids: Sequence[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        ids = self.token_ids.tolist() if torch.is_tensor(self.token_ids) else list(self.token_ids)
        if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise PruningConfigError(
                f"`token_ids` must be a non-empty sequence of non-negative token ids, got {self.token_ids!r}. "
                "HINT: build it with CollaborativePrompt.from_tokenizer(tokenizer, text)."
            )
        self.token_ids = ids

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, text: str = PRUNING_PROMPT, add_special_tokens: bool = True):
        """Tokenize ``text`` (the paper's instruction by default); the BOS token, if any, starts the prompt."""
        return cls(list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]))

    def __len__(self) -> int:
        return len(self.token_ids)

    def apply(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Prepend the prompt to a batch: ``input_ids`` (B, T) → (B, P + T), ``attention_mask`` gets P ones,
        ``labels`` get P × ``-100`` (no loss on the prompt), ``position_ids`` are shifted by P.

        The one function used by training and evaluation alike (see :meth:`wrap_collate`).

        Raises:
            PruningConfigError: no 2-D ``input_ids``, or another per-token tensor the prompt cannot extend.
        """
        ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
        if not torch.is_tensor(ids) or ids.dim() != 2:
            raise PruningConfigError(
                "CollaborativePrompt.apply needs a batch dict with 2-D `input_ids` of shape (batch, seq), got "
                f"{type(ids).__name__ if not torch.is_tensor(ids) else tuple(ids.shape)}. Apply it after padding "
                "(wrap the collate function with `prompt.wrap_collate(collate)`)."
            )
        bsz, seq = ids.shape
        p = len(self.token_ids)
        for key, value in batch.items():
            if (
                key not in _KNOWN
                and torch.is_tensor(value)
                and value.dim() >= 2
                and tuple(value.shape[:2]) == (bsz, seq)
            ):
                raise PruningConfigError(
                    f"The batch has a per-token tensor {key!r} that CollaborativePrompt does not know how to extend "
                    f"for the {p} prompt tokens. Known keys: {list(_KNOWN)}; drop {key!r} or add the prompt yourself."
                )
        out = dict(batch)
        prefix = torch.tensor(self.token_ids, dtype=ids.dtype, device=ids.device).expand(bsz, p)
        out["input_ids"] = torch.cat([prefix, ids], dim=1)
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        out["attention_mask"] = torch.cat([torch.ones(bsz, p, dtype=mask.dtype, device=mask.device), mask], dim=1)
        labels = batch.get("labels")
        if labels is not None:
            ignore = torch.full((bsz, p), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
            out["labels"] = torch.cat([ignore, labels], dim=1)
        positions = batch.get("position_ids")
        if positions is not None:
            head = torch.arange(p, dtype=positions.dtype, device=positions.device).expand(positions.shape[0], p)
            out["position_ids"] = torch.cat([head, positions + p], dim=1)
        return out

    __call__ = apply

    def wrap_collate(self, collate_fn: Callable[[list[Any]], Mapping[str, Any]] | None = None) -> Callable:
        """A collate function that pads with ``collate_fn`` (torch's default if ``None``) and then applies the
        prompt; pass the same one to the training and the evaluation ``DataLoader``."""
        from torch.utils.data import default_collate

        inner = collate_fn if collate_fn is not None else default_collate

        def collate(examples: list[Any]) -> dict[str, Any]:
            return self.apply(inner(examples))

        return collate

    def strip(self, per_token: torch.Tensor) -> torch.Tensor:
        """Drop the prompt positions of a per-token output (logits, log-likelihoods) of shape (B, P + T, ...), so
        that scores line up with the example's own tokens (pitfall: slicing log-likelihoods in evaluation)."""
        return per_token[:, len(self.token_ids) :]

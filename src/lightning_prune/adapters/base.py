"""The model-adapter interface: everything the engine needs to know about one model family.

An adapter tells the engine which structures a model has (:meth:`ModelAdapter.structures`), how big
each weight is as a function of kept units (:meth:`ModelAdapter.cost_terms`), where to apply the masks
in the forward pass (:meth:`ModelAdapter.install_hooks`, with forward hooks, so the model's classes and
any peft LoRA wrappers stay as they are) and how to build the compact model from merged weights and
final masks (:meth:`ModelAdapter.build_compact`).
"""

from __future__ import annotations

import abc
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.cost import CostTerm, Dim
from lightning_prune.errors import UnsupportedModelError
from lightning_prune.structures import StructureSpec


class MaskSource(Protocol):
    """What hooks read masks from (the :class:`~lightning_prune.pruner.Pruner`)."""

    def mask(self, structure: str) -> torch.Tensor | None:
        """The current ``(rows, units)`` mask of ``structure``, or ``None`` when it is not applied."""

    def derive(self, key: str, compute) -> None:
        """Register ``compute()``, a value derived from the masks, to be computed once per forward pass before the
        model runs (outside any gradient-checkpointed block, so recomputation repeats the same ops)."""

    def cached(self, key: str, compute=None) -> Any:
        """The value registered under ``key`` with :meth:`derive` for the current forward pass."""

    def multiply(self, x: torch.Tensor, mask: torch.Tensor, overwritten: bool = False) -> torch.Tensor:
        """``x * mask`` (broadcast), through the memory-lean op when the gate kinds allow it; ``overwritten=True``
        where the model modifies the result in place afterwards (e.g. ``nn.ReLU(inplace=True)``)."""


def block_structures(layers: int, head_units: int, ffn: int, hidden: int) -> dict[str, StructureSpec]:
    """The structures every transformer adapter offers: per-layer ``heads`` (or KV groups) and ``ffn`` channels,
    one ``hidden`` mask shared by the residual stream, and one gate per attention / MLP block."""
    return {
        "heads": StructureSpec("heads", layers, head_units),
        "ffn": StructureSpec("ffn", layers, ffn),
        "hidden": StructureSpec("hidden", 1, hidden, per_layer=False),
        "attn_block": StructureSpec("attn_block", 1, layers, per_layer=False),
        "mlp_block": StructureSpec("mlp_block", 1, layers, per_layer=False),
    }


def base_layer(module: nn.Module) -> nn.Module:
    """The layer the forward runs: the wrapped layer of a peft tuner layer (``lora.Linear``), the active trained
    copy of a ``modules_to_save`` wrapper (what the export writes, see ``peft_tuners.plain_key``), or the module."""
    copies = getattr(module, "modules_to_save", None)
    if isinstance(copies, nn.ModuleDict):
        active = getattr(module, "active_adapter", None)
        active = active[0] if isinstance(active, (list, tuple)) and active else active
        if isinstance(active, str) and active in copies:
            return base_layer(copies[active])
    getter = getattr(module, "get_base_layer", None)
    return getter() if callable(getter) else module


def plain_parameter_sizes(model: nn.Module) -> dict[str, int]:
    """Parameter sizes of ``model`` under the plain model's names: peft wrappers seen through
    (``base_layer``), tuner tensors (``lora_A``, ``ia3_l``, ...) and the pruner's own state skipped, shared tensors
    counted once."""
    from lightning_prune.peft_tuners import plain_key, tuner_layers

    layers = tuner_layers(model)
    out: dict[str, int] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        clean = plain_key(name, layers)
        if clean is None or "pruning_gates" in name or id(p) in seen:
            continue
        seen.add(id(p))
        out[clean] = p.numel()
    return out


def require_config(config: Any, fields: tuple[str, ...], adapter: str) -> None:
    """Refuse a config without one of ``fields`` (``None`` counts as missing) before the ``adapter`` adapter reads its
    sizes from it, so that a config it cannot read fails with the fields named rather than in some size computation.

    Raises:
        UnsupportedModelError: fields are missing.
    """
    missing = [k for k in fields if getattr(config, k, None) is None]
    if missing:
        raise UnsupportedModelError(f"The model's config lacks {missing}; the {adapter} adapter needs them.")


def check_prunable_weights(model: nn.Module) -> None:
    """Refuse models whose weights the export cannot slice and merge exactly, before any gate is attached.

    A model loaded from a GGUF file is accepted: transformers dequantizes it to plain float ``nn.Linear`` weights
    (it only keeps ``quant_method="gguf"`` in the config); see :mod:`lightning_prune.adapters.quantization`.

    Raises:
        UnsupportedModelError: a quantized base (a ``quantization_config`` whose loader keeps quantized storage, such
            as bitsandbytes, GPTQ, AWQ, torchao or compressed-tensors; quantized layers or tensor subclasses; integer
            or fp8 weights), or a peft tuner the export cannot merge (prompt learning, an unsupported tuner family,
            ``lora_bias`` without a base bias; see :func:`lightning_prune.peft_tuners.check_tuners`).
    """
    from lightning_prune.adapters.quantization import DEQUANTIZED_ON_LOAD, find_quantized_weight, quantization_method
    from lightning_prune.peft_tuners import check_tuners

    method = quantization_method(model)
    found = find_quantized_weight(model)
    if found is not None or (method is not None and method not in DEQUANTIZED_ON_LOAD):
        detail = f" ({found})" if found else f" (quantization_config with quant_method={method!r})"
        raise UnsupportedModelError(
            f"The model is quantized{detail}: its weights cannot be sliced and merged exactly. Load the base in "
            "bf16/fp32 to prune it (LoRA on top as usual), then quantize the compact export; QLoRA-style pruning "
            "of a 4/8-bit base is not supported. (A GGUF file loaded with `gguf_file=` is fine: transformers "
            "dequantizes it to fp32.)"
        )
    check_tuners(model)


class CompactState:
    """The merged weights of a model being cut down to its compact shapes (a helper for ``build_compact``).

    ``get`` reads a merged tensor and marks it as handled; ``put`` stores a compact tensor; ``finish`` copies every
    tensor no structure resized (e.g. Qwen3's q/k norms, position embeddings) unchanged, so nothing is dropped
    silently (the export's parameter-count check would refuse it anyway).

    Args:
        state: merged state dict of the plain model (LoRA folded in).
        masks: final deterministic masks by structure name; a structure not gated is all ones.
    """

    def __init__(self, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
        self.state = state
        self.masks = masks
        device = next(iter(state.values())).device
        # Masks live with the weights (products on GPU stay there); on the meta device (planning a 7B export without
        # weights) decisions need real values, so they stay on the CPU and products move them with ``.to(weight)``.
        self.device = torch.device("cpu") if device.type == "meta" else device
        self.new: dict[str, torch.Tensor] = {}
        self.taken: set[str] = set()

    def mask(self, name: str, rows: int, units: int) -> torch.Tensor:
        """The ``(rows, units)`` float mask of ``name`` on the weights' device (ones when not gated)."""
        m = self.masks.get(name)
        return torch.ones(rows, units, device=self.device) if m is None else m.to(self.device).float()

    def hidden(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden-dim mask and the indices of the kept dims; the mask must be binary and keep something."""
        m = self.mask("hidden", 1, size)[0]
        if "hidden" in self.masks and not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("The hidden-dim mask must be binary at export (the norms over kept dims assume it).")
        keep = m.nonzero().flatten()
        if keep.numel() == 0:
            raise ValueError("Every hidden dim is pruned; keep at least one (e.g. keep_units={'hidden': 64}).")
        return m, keep

    def get(self, key: str) -> torch.Tensor | None:
        self.taken.add(key)
        return self.state.get(key)

    def put(self, key: str, value: torch.Tensor | None) -> None:
        if value is not None:
            self.new[key] = value.contiguous()

    def finish(self) -> dict[str, torch.Tensor]:
        for key in self.state:  # keys only: reading a value of a merged view merges its LoRA again
            if key not in self.taken:
                self.new[key] = self.state[key]
        return self.new


class ModelAdapter(abc.ABC):
    """Base class of model adapters. A new family is one subclass plus one ``register_adapter`` call.

    Args:
        model: the Hugging Face (or plain) model, with any peft LoRA layers already injected.
    """

    #: registry name
    name: str = "base"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @classmethod
    @abc.abstractmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether this adapter handles ``model``."""

    @abc.abstractmethod
    def structures(self) -> dict[str, StructureSpec]:
        """The structures this model supports, by name."""

    @abc.abstractmethod
    def cost_terms(self, flops_seq_len: int) -> list[CostTerm]:
        """Every parameter of the model as :class:`CostTerm` s (exact counts must match the compact model)."""

    @abc.abstractmethod
    def root_module(self) -> nn.Module:
        """The module whose forward pre-hook refreshes the masks once per forward pass."""

    @abc.abstractmethod
    def install_hooks(self, source: MaskSource, structures: set[str]) -> list[tuple[str, nn.Module, RemovableHandle]]:
        """Register the mask hooks; return ``(module path, module, handle)`` for each hook."""

    @abc.abstractmethod
    def build_compact(
        self, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Fold ``masks`` into the merged weights ``state``, remove what is pruned, and return the compact
        model and a description of its per-layer shapes."""

    @abc.abstractmethod
    def example_inputs(self, batch_size: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random inputs for the equivalence check."""

    def refused_structures(self) -> dict[str, str]:
        """Structures the family has that this model cannot export, each with the reason and what to do instead
        (:func:`~lightning_prune.attach` refuses them with it). None by default."""
        return {}

    def uniform_masks(
        self, masks: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], fixed: set[str]
    ) -> dict[str, torch.Tensor]:
        """With ``uniform=True``: adjust the deterministic masks so the family's own config can express the
        result (e.g. Llama's hidden size must be a multiple of its attention heads). ``fixed``: structures whose
        counts the user set. Unchanged by default."""
        return masks

    def outputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The tensor compared by the equivalence check (see :func:`output_tensor`)."""
        return output_tensor(model(**inputs))

    def is_gated(self, model: nn.Module) -> bool:
        """Whether ``model`` is the gated model (or the peft wrapper around it), not a compact one."""
        from lightning_prune.peft_tuners import unwrap_model

        return unwrap_model(model) is self.model


class TokenModelAdapter(ModelAdapter):
    """Base of the adapters of transformers token models (Llama, BERT, GPT-2 families): the masks are refreshed
    before the backbone (``self.backbone``, set by the subclass) runs, and the equivalence check feeds random token ids
    below ``self.vocab_size`` with a full attention mask."""

    backbone: nn.Module
    vocab_size: int
    #: The hidden dims kept by the last :meth:`build_compact` (set by the family's surgery; ``None`` before), where a
    #: bare backbone's gated output is compared with the compact one (the pruned dims are 0 there and absent from it).
    kept_hidden: torch.Tensor | None = None

    def root_module(self) -> nn.Module:
        return self.backbone

    def at_kept_hidden(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` (a last hidden state of ``model``) at :attr:`kept_hidden` when ``model`` is the gated model."""
        if self.kept_hidden is None or not self.is_gated(model):
            return hidden
        return hidden[..., self.kept_hidden.to(hidden.device)]

    def example_inputs(self, batch_size: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, self.vocab_size, (batch_size, seq_len), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def output_tensor(out: Any) -> torch.Tensor:
    """What a head class computes, as one tensor: ``logits`` (LM, sequence / token classification), the start and
    end logits stacked on a last dim (question answering), else the last hidden state (a bare backbone)."""
    if getattr(out, "logits", None) is not None:
        return out.logits
    start, end = getattr(out, "start_logits", None), getattr(out, "end_logits", None)
    if start is not None and end is not None:
        return torch.stack([start, end], dim=-1)
    hidden = getattr(out, "last_hidden_state", None)
    return hidden if hidden is not None else out[0]


def lm_head_term(adapter: Any, hidden: Dim, covered: set[str]) -> list[CostTerm]:
    """The LM head's cost term (its input width follows ``hidden``; a head tied to the embeddings frees no
    parameters of its own), ``[]`` for a model without one; its weight and bias are added to ``covered``."""
    if adapter.head is None:
        return []
    head = base_layer(adapter.head)
    covered.update({f"{adapter.head_name}.weight", f"{adapter.head_name}.bias"})
    term = CostTerm(
        adapter.head_name,
        Dim(head.out_features),
        hidden,
        bias=head.bias is not None,
        params=not adapter.tied,
        flops_per_param=2.0,
    )
    return [term]


def fixed_size_terms(model: nn.Module, covered: set[str]) -> list[CostTerm]:
    """One fixed-size cost term per parameter of ``model`` that no structure resizes (not in ``covered``): the
    dense size must count every parameter the export keeps."""
    return [CostTerm(name, Dim(numel)) for name, numel in plain_parameter_sizes(model).items() if name not in covered]

"""What the adapters of the LayerNorm transformer families (BERT, GPT-2) share.

Both have one attention and one MLP block per layer, the five :func:`~lightning_prune.adapters.base.block_structures`,
a residual stream of ``hidden_size`` dims split evenly into heads, LayerNorms, and hooks on the backbone. They differ
in their layouts (:class:`Layout`: names, GPT-2's fused ``c_attn``) and in what sits outside the layers (embeddings,
readouts), which each family's cost terms, hooks and surgery add; the rest is written here once:
:class:`TransformerAdapter` and :class:`CostTable`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters.base import (
    MaskSource,
    TokenModelAdapter,
    base_layer,
    block_structures,
    fixed_size_terms,
)
from lightning_prune.adapters.hooks import install_transformer_hooks
from lightning_prune.cost import CostTerm, Dim
from lightning_prune.errors import UnsupportedModelError
from lightning_prune.structures import StructureSpec


@dataclass(frozen=True)
class Layout:
    """Where a family keeps its blocks: module paths in the backbone (``layers``, ``norms``) and in a layer.

    Attributes:
        layers: the layer list.
        norms: the LayerNorms outside the layers, in the order their cost terms come.
        layer_norms: a layer's LayerNorms.
        attn_in: the projections computing the heads: query, key and value, or one that stacks ``fused``
            head-sized blocks of ``hidden_size`` outputs each (GPT-2's ``c_attn``: 3).
        attn_out, mlp_in, mlp_out: the attention output, FFN input and FFN output projections.
        scores: the name (in a layer) of the attention scores' FLOPs term.
        fused: see ``attn_in``.
        embeddings: the backbone's embedding tables whose outputs enter the residual stream without a LayerNorm
            (GPT-2's ``wte``/``wpe``): ``hidden`` masks their outputs. BERT's embedding sum passes through a LayerNorm
            of ``norms``, which applies the mask, so it lists none.
    """

    layers: str
    norms: tuple[str, ...]
    layer_norms: tuple[str, ...]
    attn_in: tuple[str, ...]
    attn_out: str
    mlp_in: str
    mlp_out: str
    scores: str
    fused: int = 1
    embeddings: tuple[str, ...] = ()

    @property
    def projections(self) -> tuple[str, ...]:
        """Every projection of a layer, attention first."""
        return (*self.attn_in, self.attn_out, self.mlp_in, self.mlp_out)


class TransformerAdapter(TokenModelAdapter):
    """Base class of the BERT and GPT-2 adapters.

    A subclass sets :attr:`model_types` and :attr:`layout`, calls :meth:`_read_layout` from its ``__init__`` (then
    sets ``intermediate_size`` and its own attributes), and names the module functions that compute its cost terms
    and compact model (``staticmethod`` attributes, each called with the adapter first). Its hooks are read off the
    layout (:func:`~lightning_prune.adapters.hooks.install_transformer_hooks`).
    """

    #: the ``config.model_type`` values the adapter handles
    model_types: tuple[str, ...] = ()
    layout: Layout
    intermediate_size: int  # set by the subclass (its config names it differently)
    _cost_terms_of: Callable[..., list[CostTerm]]
    _compact_of: Callable[..., tuple[nn.Module, dict[str, Any]]]

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) in cls.model_types

    def _read_layout(self, hidden_size: str, num_heads: str) -> None:
        """The backbone, its layers and the head layout, from the config's fields named ``hidden_size`` and
        ``num_heads``.

        Raises:
            UnsupportedModelError: the hidden size is not a multiple of the number of heads.
        """
        model, config = self.model, self.model.config
        self.family = config.model_type
        self.backbone = model.base_model  # the bare model (the model itself when given one)
        self.prefix = "" if self.backbone is model else f"{model.base_model_prefix}."
        self.layers = self.backbone.get_submodule(self.layout.layers)
        self.num_layers = len(self.layers)
        self.hidden_size, self.num_heads = getattr(config, hidden_size), getattr(config, num_heads)
        if self.hidden_size % self.num_heads:
            raise UnsupportedModelError(
                f"{hidden_size}={self.hidden_size} is not a multiple of {num_heads}={self.num_heads}."
            )
        self.head_dim = self.hidden_size // self.num_heads
        self.vocab_size = config.vocab_size

    def _check_projections(self, kind: type, what: str) -> None:
        """Refuse a model whose projections are not ``kind`` (``what`` names it)."""
        layer0 = self.layers[0]
        for path in self.layout.projections:
            if not isinstance(base_layer(layer0.get_submodule(path)), kind):
                raise UnsupportedModelError(
                    f"Expected `{path}` to be {what} in {type(layer0).__name__} (is the model quantized?). "
                    "Pruning a quantized base is not supported: prune in bf16/fp32, then quantize the export."
                )

    def layer_norms(self) -> list[tuple[str, nn.Module]]:
        """Every LayerNorm as ``(path in the backbone, module)``: those outside the layers, then each layer's."""
        inner = [f"{self.layout.layers}.{l}.{n}" for l in range(self.num_layers) for n in self.layout.layer_norms]
        return [(name, self.backbone.get_submodule(name)) for name in (*self.layout.norms, *inner)]

    # -- structures and costs ----------------------------------------------------------------------
    def structures(self) -> dict[str, StructureSpec]:
        return block_structures(self.num_layers, self.num_heads, self.intermediate_size, self.hidden_size)

    def cost_terms(self, flops_seq_len: int) -> list[CostTerm]:
        return self._cost_terms_of(self, flops_seq_len)

    # -- hooks -------------------------------------------------------------------------------------
    def install_hooks(self, source: MaskSource, structures: set[str]) -> list[tuple[str, nn.Module, RemovableHandle]]:
        return install_transformer_hooks(self, source, structures)

    # -- export ------------------------------------------------------------------------------------
    def outputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits, or for a bare backbone :meth:`backbone_outputs` of the last hidden state at the kept dims.

        The gated model's hidden state is read at the hidden dims kept by the last :meth:`build_compact`
        (the pruned ones are 0 there and absent from the compact model).
        """
        out = model(**inputs)
        if hasattr(out, "logits"):
            return out.logits
        return self.backbone_outputs(out, self.at_kept_hidden(model, out.last_hidden_state))

    def backbone_outputs(self, out: Any, hidden: torch.Tensor) -> torch.Tensor:
        """What a bare backbone's output ``out`` is compared by, given its last hidden state at the kept dims."""
        return hidden

    def build_compact(
        self, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, Any]]:
        return self._compact_of(self, state, masks)


class CostTable:
    """The cost terms of a :class:`TransformerAdapter` and the state-dict keys they cover, as they are added.

    Term names are relative to the backbone; covered keys carry the adapter's prefix.
    """

    def __init__(self, adapter: TransformerAdapter) -> None:
        self.adapter = adapter
        self.prefix = adapter.prefix
        self.hidden = Dim(adapter.hidden_size, "hidden", 0, 1)
        self.terms: list[CostTerm] = []
        self.covered: set[str] = set()

    def blocks(self, flops_seq_len: int) -> None:
        """Every layer's projections (the heads' and the FFN channels' units, scaled by their block's gate) and
        attention scores."""
        a, hidden, layout = self.adapter, self.hidden, self.adapter.layout
        hd, fused = a.head_dim, layout.fused
        for l, layer in enumerate(a.layers):
            heads = Dim(a.num_heads * hd, "heads", l, hd)
            # a head's rows of each attn_in (its query, key and value rows when fused)
            heads_in = heads if fused == 1 else Dim(fused * a.num_heads * hd, "heads", l, fused * hd)
            ffn = Dim(a.intermediate_size, "ffn", l, 1)
            a_gate, m_gate = (("attn_block", 0, l),), (("mlp_block", 0, l),)
            base = f"{layout.layers}.{l}."
            linears = [(path, heads_in, hidden, a_gate) for path in layout.attn_in] + [
                (layout.attn_out, hidden, heads, a_gate),
                (layout.mlp_in, ffn, hidden, m_gate),
                (layout.mlp_out, hidden, ffn, m_gate),
            ]
            for path, out, inp, gate in linears:
                has_bias = base_layer(layer.get_submodule(path)).bias is not None
                self.terms.append(CostTerm(f"{base}{path}", out, inp, gate, has_bias, True, True, 2.0))
                self.covered.update({f"{self.prefix}{base}{path}.weight", f"{self.prefix}{base}{path}.bias"})
            # attention scores and weighted values: 4 · T · (query dims) FLOPs per token, no parameters
            scores = CostTerm(f"{base}{layout.scores}", heads, Dim(flops_seq_len), a_gate, False, True, False, 4.0)
            self.terms.append(scores)

    def norms(self) -> None:
        """Every LayerNorm over the hidden dims."""
        for name, norm in self.adapter.layer_norms():
            self.terms.append(CostTerm(name, self.hidden, bias=norm.bias is not None, params=norm.weight is not None))
            self.covered.update({f"{self.prefix}{name}.weight", f"{self.prefix}{name}.bias"})

    def embedding(self, name: str, module: nn.Module) -> None:
        """An embedding table: its rows stay, its width follows ``hidden``."""
        self.terms.append(CostTerm(name, out=self.hidden, inp=Dim(base_layer(module).num_embeddings)))
        self.covered.add(f"{self.prefix}{name}.weight")

    def finish(self) -> list[CostTerm]:
        """The terms, then every parameter no term covers at its fixed size (the export keeps it unchanged)."""
        return self.terms + fixed_size_terms(self.adapter.model, self.covered)

"""The state-dict surgery the LayerNorm families (BERT, GPT-2) share: which heads and FFN channels a layer keeps,
how the masks fold into its projections, the layer's shape record, and the compact model built from the result.

The families pass their layout (parameter names, GPT-2's fused ``c_attn``, ``Conv1D``'s ``(in, out)`` weights);
what is kept and how a mask is folded is written here once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_prune.adapters.base import CompactState
from lightning_prune.export.per_layer import build_per_layer_model

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.transformer import TransformerAdapter


class BlockSurgery(CompactState):
    """:class:`CompactState` with the masks of the five block structures read for ``adapter``'s sizes.

    Args:
        adapter: the adapter whose merged weights ``state`` are (its sizes and head layout).
        state, masks: as for :class:`CompactState`.
        transposed: the projections store their weights ``(in, out)`` (``Conv1D``), not ``(out, in)``.

    A family cuts what sits outside the layers (embeddings, readouts) with :meth:`cut_hidden` and :meth:`readout`,
    the layers with :meth:`cut_layers`, and builds the compact model with :meth:`assemble`.
    """

    def __init__(
        self,
        adapter: TransformerAdapter,
        state: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        transposed: bool = False,
    ) -> None:
        super().__init__(state, masks)
        L = adapter.num_layers
        self.adapter, self.transposed = adapter, transposed
        self.hidden_mask, self.hidden_keep = self.hidden(adapter.hidden_size)
        self.heads, self.ffn = self.mask("heads", L, adapter.num_heads), self.mask("ffn", L, adapter.intermediate_size)
        self.attn_gate, self.mlp_gate = self.mask("attn_block", 1, L)[0], self.mask("mlp_block", 1, L)[0]
        self._nothing = torch.zeros(0, dtype=torch.long, device=self.device)

    def _kept(self, units: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Indices of the kept units of one block (none when its gate removed the whole block)."""
        return (units != 0).nonzero().flatten() if gate != 0 else self._nothing

    def _slice(self, w: torch.Tensor, outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return w[inputs][:, outputs] if self.transposed else w[outputs][:, inputs]

    def cut_hidden(self, keys: Iterable[str]) -> None:
        """Tensors whose last dim is the hidden size (embedding tables, norms, readout weights): its kept dims."""
        for key in keys:
            value = self.get(key)
            self.put(key, None if value is None else value[..., self.hidden_keep])

    def readout(self, path: str) -> None:
        """A linear layer reading the final hidden state (a pooler, a head): its inputs cut, its bias unchanged."""
        self.cut_hidden([f"{path}.weight"])
        self.put(f"{path}.bias", self.get(f"{path}.bias"))

    def _read(self, path: str, outputs: torch.Tensor) -> None:
        """A projection reading the residual stream: its ``outputs`` and the kept hidden inputs."""
        w, b = self.get(f"{path}.weight"), self.get(f"{path}.bias")
        self.put(f"{path}.weight", self._slice(w, outputs, self.hidden_keep))
        self.put(f"{path}.bias", None if b is None else b[outputs])

    def _write(self, path: str, inputs: torch.Tensor, unit_scale: torch.Tensor, gate: torch.Tensor) -> None:
        """A projection writing the residual stream: the unit mask folded into its inputs, the block gate and the
        hidden mask into its outputs, then its kept ``inputs`` and hidden outputs (no bias left once the gate is 0)."""
        w, b = self.get(f"{path}.weight"), self.get(f"{path}.bias")
        out_scale = (self.hidden_mask * gate).to(w.dtype)
        if self.transposed:
            w = w * unit_scale.to(w.dtype)[:, None] * out_scale[None, :]
        else:
            w = w * unit_scale.to(w.dtype)[None, :] * out_scale[:, None]
        self.put(f"{path}.weight", self._slice(w, self.hidden_keep, inputs))
        self.put(f"{path}.bias", None if b is None or gate == 0 else (b * out_scale)[self.hidden_keep])

    def cut_layers(self) -> list[dict[str, Any]]:
        """Cut every layer (:meth:`_cut_layer`), then every LayerNorm; return the layers' shape records."""
        shapes = [self._cut_layer(l) for l in range(self.adapter.num_layers)]
        norms = [f"{self.adapter.prefix}{name}" for name, _ in self.adapter.layer_norms()]
        self.cut_hidden(f"{norm}.{suffix}" for norm in norms for suffix in ("weight", "bias"))
        return shapes

    def _cut_layer(self, layer: int) -> dict[str, Any]:
        """Cut one layer's projections (the adapter's :class:`~lightning_prune.adapters.transformer.Layout`) and
        return its shape record (the per-layer classes' ``layer_shapes`` entry)."""
        adapter, layout = self.adapter, self.adapter.layout
        hd, d = adapter.head_dim, adapter.hidden_size
        base = f"{adapter.prefix}{layout.layers}.{layer}."
        attn_in, attn_out = [f"{base}{path}" for path in layout.attn_in], f"{base}{layout.attn_out}"
        mlp_in, mlp_out = f"{base}{layout.mlp_in}", f"{base}{layout.mlp_out}"
        a_scale, m_scale = self.attn_gate[layer], self.mlp_gate[layer]
        heads = self._kept(self.heads[layer], a_scale)
        rows = (heads[:, None] * hd + torch.arange(hd, device=self.device)).flatten()  # within q, k or v
        for path in attn_in:  # a fused projection stacks the q, k and v rows of every head
            self._read(path, torch.cat([rows + i * d for i in range(layout.fused)]))
        self._write(attn_out, rows, self.heads[layer].repeat_interleave(hd), a_scale)
        channels = self._kept(self.ffn[layer], m_scale)
        self._read(mlp_in, channels)
        self._write(mlp_out, channels, self.ffn[layer], m_scale)

        n_heads, n_channels = int(heads.numel()), int(channels.numel())
        shape = {
            "num_attention_heads": n_heads,
            "intermediate_size": n_channels,
            "attention_output_bias": f"{attn_out}.bias" in self.new,
            "ffn_output_bias": f"{mlp_out}.bias" in self.new,
        }
        # A block with nothing left keeps only its output bias (the per-layer classes' _BiasOnly).
        for empty, inputs, output in ((n_heads == 0, attn_in, attn_out), (n_channels == 0, [mlp_in], mlp_out)):
            if empty:
                for key in [f"{p}.{s}" for p in inputs for s in ("weight", "bias")] + [f"{output}.weight"]:
                    self.new.pop(key, None)
        return shape

    def assemble(
        self,
        layer_shapes: list[dict[str, Any]],
        instantiate: Callable[[int], tuple[nn.Module, bool]],
        tied: str | None = None,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """The compact model: ``instantiate(hidden size)`` on the meta device, then the cut tensors (and every
        tensor no structure resized, unchanged) as its parameters; ``tied``: the head weight tied to an embedding."""
        from lightning_prune.export.assemble import assign_weights, parameters_on_meta  # local: avoids a cycle

        adapter, d_new = self.adapter, int(self.hidden_keep.numel())
        self.finish()  # parameters no structure resizes, unchanged
        with parameters_on_meta():  # no memory and no random init: the sliced tensors become the parameters
            compact, uniform = instantiate(d_new)
        assign_weights(compact, self.new, self.state, adapter.model, tied=tied)
        adapter.kept_hidden = self.hidden_keep.cpu()
        info = {"layer_shapes": layer_shapes, "hidden_size": d_new, "uniform": uniform}
        return compact.to(self.device).eval(), info  # eval mode, like from_pretrained (a fresh nn.Module trains)


def standard_shapes(layer_shapes: list[dict[str, Any]], hidden_size: int, head_dim: int) -> bool:
    """Whether the family's own config can express ``layer_shapes``: the same in every layer, something left in every
    block, the output biases kept, and the head size the stock attention derives (hidden size / heads) unchanged."""
    first = layer_shapes[0]
    heads = first["num_attention_heads"]
    return (
        all(s == first for s in layer_shapes)
        and heads > 0
        and first["intermediate_size"] > 0
        and first["attention_output_bias"]
        and first["ffn_output_bias"]
        and hidden_size % heads == 0
        and hidden_size // heads == head_dim
    )


def instantiate(
    adapter: TransformerAdapter,
    config: dict[str, Any],
    standard: dict[str, Any] | None,
    per_layer: dict[str, Any],
    layer_shapes: list[dict[str, Any]],
    **init_kwargs: Any,
) -> tuple[nn.Module, bool]:
    """The family's own class with ``config`` updated by ``standard`` (and ``init_kwargs``) when given, else the
    per-layer class with ``config`` updated by ``per_layer``; and whether it is the family's own."""
    with torch.device("cpu"):
        if standard is not None:
            own = type(adapter.model.config).from_dict({**config, **standard})
            return type(adapter.model)(own, **init_kwargs), True
        name = type(adapter.model).__name__
        return build_per_layer_model(adapter.family, name, {**config, **per_layer}, layer_shapes), False

"""The BERT family's state-dict surgery: fold the final masks into the merged weights, slice away the pruned
units and build the compact model (a standard ``Bert*``/``Roberta*`` model when its config can express the shapes,
else the per-layer classes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_prune.adapters.base import CompactState
from lightning_prune.adapters.quantization import plain_config_dict
from lightning_prune.export.per_layer import build_per_layer_model

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.bert.adapter import BertAdapter


def build_bert_compact(
    adapter: BertAdapter, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> tuple[nn.Module, dict[str, Any]]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.build_compact` of ``adapter``'s model."""
    from lightning_prune.export.assemble import assign_weights, parameters_on_meta  # local: avoids a cycle

    p, d, hd, L = adapter.prefix, adapter.hidden_size, adapter.head_dim, adapter.num_layers
    surgery = CompactState(state, masks)
    dev, mask_of = surgery.device, surgery.mask
    hidden_m, h_keep = surgery.hidden(d)
    d_new = int(h_keep.numel())
    head_m, ffn_m = mask_of("heads", L, adapter.num_heads), mask_of("ffn", L, adapter.intermediate_size)
    attn_z, mlp_z = mask_of("attn_block", 1, L)[0], mask_of("mlp_block", 1, L)[0]
    empty = torch.zeros(0, dtype=torch.long, device=dev)

    new, take, get, put = surgery.new, surgery.taken, surgery.get, surgery.put

    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        w = get(f"{p}embeddings.{name}.weight")
        put(f"{p}embeddings.{name}.weight", None if w is None else w[:, h_keep])
    norms = [f"{p}embeddings.LayerNorm"]

    layer_shapes = []
    for l in range(L):
        base = f"{p}encoder.layer.{l}."
        a_scale, m_scale = attn_z[l], mlp_z[l]
        heads = (head_m[l] != 0).nonzero().flatten() if a_scale != 0 else empty
        rows = (heads[:, None] * hd + torch.arange(hd, device=dev)).flatten()
        for name in ("query", "key", "value"):
            w, b = get(f"{base}attention.self.{name}.weight"), get(f"{base}attention.self.{name}.bias")
            put(f"{base}attention.self.{name}.weight", w[rows][:, h_keep])
            put(f"{base}attention.self.{name}.bias", None if b is None else b[rows])
        # fold the head mask into the output projection's columns, block gate and hidden mask into its rows
        w, b = get(f"{base}attention.output.dense.weight"), get(f"{base}attention.output.dense.bias")
        out_scale = (hidden_m * a_scale).to(w.dtype)
        w = w * head_m[l].repeat_interleave(hd).to(w.dtype)[None, :] * out_scale[:, None]
        put(f"{base}attention.output.dense.weight", w[h_keep][:, rows])
        put(f"{base}attention.output.dense.bias", None if b is None or a_scale == 0 else (b * out_scale)[h_keep])

        channels = (ffn_m[l] != 0).nonzero().flatten() if m_scale != 0 else empty
        w, b = get(f"{base}intermediate.dense.weight"), get(f"{base}intermediate.dense.bias")
        put(f"{base}intermediate.dense.weight", w[channels][:, h_keep])
        put(f"{base}intermediate.dense.bias", None if b is None else b[channels])
        w, b = get(f"{base}output.dense.weight"), get(f"{base}output.dense.bias")
        out_scale = (hidden_m * m_scale).to(w.dtype)
        w = w * ffn_m[l].to(w.dtype)[None, :] * out_scale[:, None]
        put(f"{base}output.dense.weight", w[h_keep][:, channels])
        put(f"{base}output.dense.bias", None if b is None or m_scale == 0 else (b * out_scale)[h_keep])
        norms += [f"{base}attention.output.LayerNorm", f"{base}output.LayerNorm"]

        n_heads, n_channels = int(heads.numel()), int(channels.numel())
        shape = {
            "num_attention_heads": n_heads,
            "intermediate_size": n_channels,
            "attention_output_bias": f"{base}attention.output.dense.bias" in new,
            "ffn_output_bias": f"{base}output.dense.bias" in new,
        }
        layer_shapes.append(shape)
        # A block with nothing left keeps only its output bias (the per-layer classes' _BiasOnly).
        if n_heads == 0:
            for key in [k for k in new if k.startswith(f"{base}attention.self.")]:
                del new[key]
            new.pop(f"{base}attention.output.dense.weight", None)
        if n_channels == 0:
            new.pop(f"{base}intermediate.dense.weight", None)
            new.pop(f"{base}intermediate.dense.bias", None)
            new.pop(f"{base}output.dense.weight", None)
    for norm in norms:
        for suffix in ("weight", "bias"):
            value = get(f"{norm}.{suffix}")
            put(f"{norm}.{suffix}", None if value is None else value[h_keep])
    for path in adapter.readouts:
        w = get(f"{path}.weight")
        put(f"{path}.weight", w[:, h_keep])
        take.add(f"{path}.bias")  # copied unchanged below
        put(f"{path}.bias", state.get(f"{path}.bias"))
    surgery.finish()  # parameters no structure resizes, unchanged

    with parameters_on_meta():  # no memory and no random init: the sliced tensors become the parameters
        compact, uniform = _instantiate(adapter, d_new, layer_shapes)
    assign_weights(compact, new, state, adapter.model)
    adapter._hidden_keep = h_keep.cpu()
    info = {"layer_shapes": layer_shapes, "hidden_size": d_new, "uniform": uniform}
    return compact.to(dev).eval(), info  # eval mode, like from_pretrained (a fresh nn.Module trains)


def _instantiate(adapter: BertAdapter, d_new: int, layer_shapes: list[dict[str, Any]]) -> tuple[nn.Module, bool]:
    """The standard class when its config can express the shapes, else the per-layer class."""
    first = layer_shapes[0]
    heads = first["num_attention_heads"]
    standard_ok = (
        all(s == first for s in layer_shapes)
        and heads > 0
        and first["intermediate_size"] > 0
        and first["attention_output_bias"]
        and first["ffn_output_bias"]
        and d_new % heads == 0
        and d_new // heads == adapter.head_dim  # BERT derives head size = hidden_size / num_attention_heads
        and (not adapter.readouts or adapter.pooler_size == d_new)  # the stock pooler / head dense is square
    )
    config = plain_config_dict(adapter.model.config)  # a dict: strict configs validate on every setattr
    config.update(hidden_size=d_new)
    if standard_ok:
        config.update(num_attention_heads=heads, intermediate_size=first["intermediate_size"])
        standard = type(adapter.model.config).from_dict(config)
        with torch.device("cpu"):
            if adapter.kind == "Model":
                compact = type(adapter.model)(standard, add_pooling_layer=adapter.backbone.pooler is not None)
            else:
                compact = type(adapter.model)(standard)
        return compact, True
    config.update(
        attention_head_size=adapter.head_dim,
        pooler_size=adapter.pooler_size,
        add_pooling_layer=adapter.backbone.pooler is not None,
    )
    with torch.device("cpu"):
        compact = build_per_layer_model(adapter.family, type(adapter.model).__name__, config, layer_shapes)
    return compact, False

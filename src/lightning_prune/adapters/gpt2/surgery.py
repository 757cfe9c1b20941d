"""The GPT-2 state-dict surgery: fold the final masks into the merged ``Conv1D`` weights (stored ``(in, out)``),
slice away the pruned units and build the compact model (a standard ``GPT2*`` model when ``GPT2Config`` can express
the shapes, else the per-layer classes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_prune.adapters.base import CompactState
from lightning_prune.adapters.quantization import plain_config_dict
from lightning_prune.export.per_layer import build_per_layer_model

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.gpt2.adapter import GPT2Adapter


def build_gpt2_compact(
    adapter: GPT2Adapter, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
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

    new, get, put = surgery.new, surgery.get, surgery.put

    for name in ("wte", "wpe"):
        w = get(f"{p}{name}.weight")
        put(f"{p}{name}.weight", w[:, h_keep])
    norms = [f"{p}ln_f"]
    layer_shapes = []
    for l in range(L):
        base = f"{p}h.{l}."
        a_scale, m_scale = attn_z[l], mlp_z[l]
        heads = (head_m[l] != 0).nonzero().flatten() if a_scale != 0 else empty
        rows = (heads[:, None] * hd + torch.arange(hd, device=dev)).flatten()  # within q, k or v
        qkv = torch.cat([rows, rows + d, rows + 2 * d])
        # Conv1D weights are (in, out): columns are outputs
        w, b = get(f"{base}attn.c_attn.weight"), get(f"{base}attn.c_attn.bias")
        put(f"{base}attn.c_attn.weight", w[h_keep][:, qkv])
        put(f"{base}attn.c_attn.bias", None if b is None else b[qkv])
        w, b = get(f"{base}attn.c_proj.weight"), get(f"{base}attn.c_proj.bias")
        out_scale = (hidden_m * a_scale).to(w.dtype)
        w = w * head_m[l].repeat_interleave(hd).to(w.dtype)[:, None] * out_scale[None, :]
        put(f"{base}attn.c_proj.weight", w[rows][:, h_keep])
        put(f"{base}attn.c_proj.bias", None if b is None or a_scale == 0 else (b * out_scale)[h_keep])

        channels = (ffn_m[l] != 0).nonzero().flatten() if m_scale != 0 else empty
        w, b = get(f"{base}mlp.c_fc.weight"), get(f"{base}mlp.c_fc.bias")
        put(f"{base}mlp.c_fc.weight", w[h_keep][:, channels])
        put(f"{base}mlp.c_fc.bias", None if b is None else b[channels])
        w, b = get(f"{base}mlp.c_proj.weight"), get(f"{base}mlp.c_proj.bias")
        out_scale = (hidden_m * m_scale).to(w.dtype)
        w = w * ffn_m[l].to(w.dtype)[:, None] * out_scale[None, :]
        put(f"{base}mlp.c_proj.weight", w[channels][:, h_keep])
        put(f"{base}mlp.c_proj.bias", None if b is None or m_scale == 0 else (b * out_scale)[h_keep])
        norms += [f"{base}ln_1", f"{base}ln_2"]

        n_heads, n_channels = int(heads.numel()), int(channels.numel())
        layer_shapes.append(
            {
                "num_attention_heads": n_heads,
                "intermediate_size": n_channels,
                "attention_output_bias": f"{base}attn.c_proj.bias" in new,
                "ffn_output_bias": f"{base}mlp.c_proj.bias" in new,
            }
        )
        # A block with nothing left keeps only its output bias (the per-layer classes' _BiasOnly).
        if n_heads == 0:
            for key in (f"{base}attn.c_attn.weight", f"{base}attn.c_attn.bias", f"{base}attn.c_proj.weight"):
                new.pop(key, None)
        if n_channels == 0:
            for key in (f"{base}mlp.c_fc.weight", f"{base}mlp.c_fc.bias", f"{base}mlp.c_proj.weight"):
                new.pop(key, None)
    for norm in norms:
        for suffix in ("weight", "bias"):
            value = get(f"{norm}.{suffix}")
            put(f"{norm}.{suffix}", None if value is None else value[h_keep])
    if adapter.head is not None:
        w, b = get(f"{adapter.head_name}.weight"), get(f"{adapter.head_name}.bias")
        put(f"{adapter.head_name}.weight", w[:, h_keep])
        put(f"{adapter.head_name}.bias", b)
    surgery.finish()  # parameters no structure resizes, unchanged

    with parameters_on_meta():  # no memory and no random init: the sliced tensors become the parameters
        compact, uniform = _instantiate(adapter, d_new, layer_shapes)
    assign_weights(compact, new, state, adapter.model, tied=f"{adapter.head_name}.weight" if adapter.tied else None)
    adapter._hidden_keep = h_keep.cpu()
    info = {"layer_shapes": layer_shapes, "hidden_size": d_new, "uniform": uniform}
    return compact.to(dev).eval(), info  # eval mode, like from_pretrained (a fresh nn.Module trains)


def _instantiate(adapter: GPT2Adapter, d_new: int, layer_shapes: list[dict[str, Any]]) -> tuple[nn.Module, bool]:
    """The standard class when ``GPT2Config`` can express the shapes, else the per-layer class."""
    first = layer_shapes[0]
    heads = first["num_attention_heads"]
    standard_ok = (
        all(s == first for s in layer_shapes)
        and heads > 0
        and first["intermediate_size"] > 0
        and first["attention_output_bias"]
        and first["ffn_output_bias"]
        and d_new % heads == 0
        and d_new // heads == adapter.head_dim  # GPT2Attention derives head_dim = n_embd / n_head
    )
    config = plain_config_dict(adapter.model.config)  # a dict: strict configs validate on every setattr
    config.update(n_embd=d_new)
    if standard_ok:
        config.update(n_head=heads, n_inner=first["intermediate_size"])
        with torch.device("cpu"):
            compact = type(adapter.model)(type(adapter.model.config).from_dict(config))
        return compact, True
    config.update(attention_head_size=adapter.head_dim)
    with torch.device("cpu"):
        compact = build_per_layer_model(adapter.family, type(adapter.model).__name__, config, layer_shapes)
    return compact, False

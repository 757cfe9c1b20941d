"""The Llama family's state-dict surgery: fold the final masks into the merged weights, slice away the pruned
units and build the compact model (the family's own class when its config can express the shapes, else the
per-layer classes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_prune.adapters.base import CompactState
from lightning_prune.adapters.head_dims import qk_dim_index
from lightning_prune.adapters.llama.config import _standard_config
from lightning_prune.adapters.quantization import plain_config_dict
from lightning_prune.export.per_layer import build_per_layer_model

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.llama.adapter import LlamaAdapter

_PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def _is_projection(key: str, block: str) -> bool:
    """Whether ``key`` (relative to a block) belongs to one of the block's projections."""
    return key.split(".")[0] in _PROJECTIONS[block]


@dataclass
class SlicedWeights:
    """The compact tensors of a Llama-layout model and the shapes they imply (what :func:`slice_llama_weights` cut).

    Attributes:
        new: compact tensors by plain-model key.
        layer_shapes: per layer, the kept heads, KV heads and FFN channels (and head dims when pruned).
        hidden_keep: indices of the kept hidden dims.
        device: where the weights live.
    """

    new: dict[str, torch.Tensor]
    layer_shapes: list[dict[str, Any]]
    hidden_keep: torch.Tensor
    device: torch.device


def build_llama_compact(
    adapter: LlamaAdapter, state: Mapping[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> tuple[nn.Module, dict[str, Any]]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.build_compact` of ``adapter``'s model."""
    return assemble_llama_compact(adapter, state, slice_llama_weights(adapter, state, masks))


def slice_llama_weights(
    adapter: LlamaAdapter, state: Mapping[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> SlicedWeights:
    """Fold ``masks`` into the merged weights ``state`` (Llama's layout: separate q/k/v and gate/up projections) and
    slice away the pruned units."""
    p, d, hd, nrep = adapter.prefix, adapter.hidden_size, adapter.head_dim, adapter.n_rep
    nh, nkv, L = adapter.num_heads, adapter.num_kv_heads, adapter.num_layers
    surgery = CompactState(state, masks)
    mask_of = surgery.mask
    hidden_m, h_keep = surgery.hidden(d)
    head_m, ffn_m = mask_of("heads", L, nkv), mask_of("ffn", L, adapter.intermediate_size)
    attn_z, mlp_z = mask_of("attn_block", 1, L)[0], mask_of("mlp_block", 1, L)[0]
    qk_m, v_m = mask_of("qk_dims", L, hd // 2), mask_of("v_dims", L, hd)
    head_dims = "qk_dims" in masks or "v_dims" in masks
    if adapter.qk_norms and "qk_dims" in masks and not bool(((qk_m == 0) | (qk_m == 1)).all()):
        raise ValueError(
            "The qk_dims mask must be binary at export on models with q/k RMSNorms (Qwen3): the norms run over "
            "the kept dims, which a scaled mask cannot be folded through. Use a binary gate kind (L0Config, "
            "ATPConfig, STEConfig) for qk_dims on this model."
        )

    new, take, get, put = surgery.new, surgery.taken, surgery.get, surgery.put

    embed = get(f"{p}embed_tokens.weight")
    put(f"{p}embed_tokens.weight", (embed * hidden_m.to(embed))[:, h_keep])

    layer_shapes = []
    for l in range(L):
        base = f"{p}layers.{l}."
        a_scale, m_scale = attn_z[l], mlp_z[l]
        groups = (head_m[l] != 0).nonzero().flatten() if a_scale != 0 else head_m.new_zeros(0, dtype=torch.long)
        heads = (groups[:, None] * nrep + torch.arange(nrep, device=groups.device)).flatten()  # kept query heads
        pairs = (qk_m[l] != 0).nonzero().flatten()
        qk_idx, v_idx = qk_dim_index(pairs, hd), (v_m[l] != 0).nonzero().flatten()  # kept dims of a head
        rows = {
            "q_proj": (heads[:, None] * hd + qk_idx).flatten(),
            "k_proj": (groups[:, None] * hd + qk_idx).flatten(),
            "v_proj": (groups[:, None] * hd + v_idx).flatten(),
        }
        # q and k both carry the pair mask (q·k sees its square); with q/k norms it is binary (checked above)
        qk_scale = qk_m[l].repeat(2) if "qk_dims" in masks and not adapter.qk_norms else None
        for name, n in (("q_proj", nh), ("k_proj", nkv), ("v_proj", nkv)):
            w, b = get(f"{base}self_attn.{name}.weight"), get(f"{base}self_attn.{name}.bias")
            if name != "v_proj" and qk_scale is not None:
                row_scale = qk_scale.repeat(n).to(w)
                w, b = w * row_scale[:, None], None if b is None else b * row_scale
            put(f"{base}self_attn.{name}.weight", w[rows[name]][:, h_keep])
            put(f"{base}self_attn.{name}.bias", None if b is None else b[rows[name]])
        if adapter.qk_norms:
            for norm in ("q_norm", "k_norm"):
                put(f"{base}self_attn.{norm}.weight", get(f"{base}self_attn.{norm}.weight")[qk_idx])
        w, b = get(f"{base}self_attn.o_proj.weight"), get(f"{base}self_attn.o_proj.bias")
        out_scale = (hidden_m * a_scale).to(w)
        in_scale = head_m[l].repeat_interleave(nrep * hd) * v_m[l].repeat(nh)  # KV groups × value dims
        w = w * in_scale.to(w)[None, :] * out_scale[:, None]
        o_cols = (heads[:, None] * hd + v_idx).flatten()
        put(f"{base}self_attn.o_proj.weight", w[h_keep][:, o_cols])
        put(f"{base}self_attn.o_proj.bias", None if b is None else (b * out_scale)[h_keep])

        channels = (ffn_m[l] != 0).nonzero().flatten() if m_scale != 0 else ffn_m.new_zeros(0, dtype=torch.long)
        for name in ("gate_proj", "up_proj"):
            w, b = get(f"{base}mlp.{name}.weight"), get(f"{base}mlp.{name}.bias")
            put(f"{base}mlp.{name}.weight", w[channels][:, h_keep])
            put(f"{base}mlp.{name}.bias", None if b is None else b[channels])
        w, b = get(f"{base}mlp.down_proj.weight"), get(f"{base}mlp.down_proj.bias")
        out_scale = (hidden_m * m_scale).to(w)
        w = w * ffn_m[l].to(w)[None, :] * out_scale[:, None]
        put(f"{base}mlp.down_proj.weight", w[h_keep][:, channels])
        put(f"{base}mlp.down_proj.bias", None if b is None else (b * out_scale)[h_keep])
        for norm in ("input_layernorm", "post_attention_layernorm"):
            put(f"{base}{norm}.weight", get(f"{base}{norm}.weight")[h_keep])
        n_groups = int(groups.numel())
        shape: dict[str, Any] = {
            "num_attention_heads": n_groups * nrep,
            "num_key_value_heads": n_groups,
            "intermediate_size": int(channels.numel()),
        }
        if head_dims:  # the per-layer attention reads these (modeling_per_layer.py)
            shape.update(qk_dim=int(qk_idx.numel()), v_dim=int(v_idx.numel()), rope_pairs=pairs.tolist())
        layer_shapes.append(shape)
        # A block with nothing left becomes an empty module that keeps only its output bias.
        for block, empty in (("self_attn", n_groups == 0), ("mlp", channels.numel() == 0)):
            if empty:
                prefix = f"{base}{block}."
                # only the projections go; other parameters (Qwen3's q_norm/k_norm) stay, as the cost model counts
                gone = [k for k in state if k.startswith(prefix) and _is_projection(k[len(prefix) :], block)]
                take.update(gone)
                out_bias = new.get(f"{prefix}{'o_proj' if block == 'self_attn' else 'down_proj'}.bias")
                for k in [k for k in gone if k in new]:
                    del new[k]
                put(f"{prefix}bias", out_bias)
    put(f"{p}norm.weight", get(f"{p}norm.weight")[h_keep])
    if adapter.head is not None:
        w, b = get(f"{adapter.head_name}.weight"), get(f"{adapter.head_name}.bias")
        put(f"{adapter.head_name}.weight", w[:, h_keep])
        put(f"{adapter.head_name}.bias", b)
    surgery.finish()  # parameters no structure resizes, unchanged
    return SlicedWeights(new, layer_shapes, h_keep, embed.device)


def assemble_llama_compact(
    adapter: LlamaAdapter, state: Mapping[str, torch.Tensor], sliced: SlicedWeights
) -> tuple[nn.Module, dict[str, Any]]:
    """The compact model holding ``sliced``: the family's own class when its config can express the shapes, else
    the per-layer classes. ``state``: the merged weights ``sliced`` was cut from (tensors no structure resized are
    copied rather than shared with the live model)."""
    from lightning_prune.export.assemble import assign_weights, parameters_on_meta  # local: avoids a cycle

    hd, layer_shapes, h_keep = adapter.head_dim, sliced.layer_shapes, sliced.hidden_keep
    d_new = int(h_keep.numel())
    config = plain_config_dict(adapter.model.config)  # a dict: strict configs validate on every setattr
    config.update(hidden_size=d_new, head_dim=hd)
    config_class = type(adapter.model.config)
    # Pruned head dims need the per-layer attention (rotary subset, original scaling, qk_dim ≠ v_dim): no standard
    # config can hold them, whatever `uniform` asked for.
    full_dims = all(s.get("qk_dim", hd) == hd and s.get("v_dim", hd) == hd for s in layer_shapes)
    uniform = (
        full_dims
        and all(s == layer_shapes[0] for s in layer_shapes)
        and all(s["num_attention_heads"] > 0 and s["intermediate_size"] > 0 for s in layer_shapes)
    )
    counts = {k: layer_shapes[0][k] for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size")}
    standard = _standard_config(config_class, {**config, **counts}) if uniform else None
    with parameters_on_meta():  # no memory and no random init: the sliced tensors become the parameters
        if standard is not None:
            compact = type(adapter.model)(standard)
        else:
            compact = build_per_layer_model(adapter.family, type(adapter.model).__name__, config, layer_shapes)
    uniform = standard is not None
    tied = f"{adapter.head_name}.weight" if adapter.tied else None
    assign_weights(compact, sliced.new, state, adapter.model, tied=tied)
    adapter._hidden_keep = h_keep.cpu()
    return compact.to(sliced.device), {"layer_shapes": layer_shapes, "hidden_size": d_new, "uniform": uniform}

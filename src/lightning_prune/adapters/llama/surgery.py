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
from lightning_prune.adapters.llama.layout import LAYER_NORMS, LLAMA_LAYER, QK_NORMS, block_output, folded, kept_index
from lightning_prune.adapters.quantization import plain_config_dict
from lightning_prune.export.per_layer import build_per_layer_model

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.llama.adapter import LlamaAdapter


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
    p, hd, nrep, L = adapter.prefix, adapter.head_dim, adapter.n_rep, adapter.num_layers
    surgery = CompactState(state, masks)
    hidden_m, h_keep = surgery.hidden(adapter.hidden_size)
    units = {"heads": adapter.num_kv_heads, "ffn": adapter.intermediate_size, "qk_dims": hd // 2, "v_dims": hd}
    per_layer = {name: surgery.mask(name, L, n) for name, n in units.items()}
    per_layer.update({gate: surgery.mask(gate, 1, L)[0] for gate in ("attn_block", "mlp_block")})  # one row
    qk_m = per_layer["qk_dims"]
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
        row = {name: m[l] for name, m in per_layer.items()} | {"hidden": hidden_m}  # the layer's row of every mask
        kept = {name: (row[name] != 0).nonzero().flatten() for name in units}  # heads: KV groups; qk_dims: pairs
        for structure, gate in (("heads", "attn_block"), ("ffn", "mlp_block")):
            if row[gate] == 0:  # the block is gone: it keeps no unit
                kept[structure] = kept[structure][:0]
        pairs, kept["qk_dims"], kept["hidden"] = kept["qk_dims"], qk_dim_index(kept["qk_dims"], hd), h_keep
        # q and k both carry the pair mask (q·k sees its square); with q/k norms it is binary (checked above)
        fold_qk = "qk_dims" in masks and not adapter.qk_norms
        for proj in LLAMA_LAYER:
            key = f"{base}{proj.path}"
            w, b = folded(adapter, proj, get(f"{key}.weight"), get(f"{key}.bias"), row, fold_qk)
            out, inp = kept_index(adapter, proj.out, kept), kept_index(adapter, proj.inp, kept)
            put(f"{key}.weight", w[out][:, inp])
            put(f"{key}.bias", None if b is None else b[out])
        if adapter.qk_norms:
            for norm in QK_NORMS:
                put(f"{base}{norm}.weight", get(f"{base}{norm}.weight")[kept["qk_dims"]])
        for norm in LAYER_NORMS:
            put(f"{base}{norm}.weight", get(f"{base}{norm}.weight")[h_keep])
        n_groups, n_channels = int(kept["heads"].numel()), int(kept["ffn"].numel())
        shape: dict[str, Any] = {
            "num_attention_heads": n_groups * nrep,
            "num_key_value_heads": n_groups,
            "intermediate_size": n_channels,
        }
        if head_dims:  # the per-layer attention reads these (modeling_per_layer.py)
            qk_dim, v_dim = int(kept["qk_dims"].numel()), int(kept["v_dims"].numel())
            shape.update(qk_dim=qk_dim, v_dim=v_dim, rope_pairs=pairs.tolist())
        layer_shapes.append(shape)
        # A block with nothing left becomes an empty module that keeps only its output bias, unless its block gate
        # closed: then the bias is gone too (it was scaled by the gate, as the cost model counts it)
        for block, empty, gate in (("self_attn", n_groups == 0, "attn_block"), ("mlp", n_channels == 0, "mlp_block")):
            if empty:
                # only the projections go; other parameters (Qwen3's q_norm/k_norm) stay, as the cost model counts
                paths = [f"{base}{proj.path}." for proj in LLAMA_LAYER if proj.block == block]
                gone = [k for k in state if any(k.startswith(path) for path in paths)]
                take.update(gone)
                out_bias = new.get(f"{base}{block_output(block).path}.bias")
                for k in [k for k in gone if k in new]:
                    del new[k]
                if out_bias is not None and row[gate] == 0:
                    out_bias = None
                    shape[f"{block}_output_bias"] = False  # the per-layer empty block is built without one
                put(f"{base}{block}.bias", out_bias)
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
    adapter.kept_hidden = h_keep.cpu()
    return compact.to(sliced.device), {"layer_shapes": layer_shapes, "hidden_size": d_new, "uniform": uniform}

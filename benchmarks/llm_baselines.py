"""One-shot structured pruning baselines for Llama-family LLMs (implemented from the papers, no code copied).

Units are the ones our gates use, so budgets compare one to one: a **KV group** (one KV head, the query heads that
share it under GQA: their ``q_proj``/``k_proj``/``v_proj`` rows and ``o_proj`` columns) and an **FFN channel**
(a ``gate_proj``/``up_proj`` row and a ``down_proj`` column). Removal is by direct slicing of the ``nn.Linear``
weights (:func:`slice_llama_`); HF's Llama attention reshapes with ``-1`` heads, so per-layer widths run as they are.

* :func:`taylor_scores` — **LLM-Pruner** (Ma et al., NeurIPS 2023): first-order Taylor importance
  ``|w · ∂L/∂w|`` summed over each group's weights, gradients accumulated over calibration batches.
* :func:`activation_stats` + :func:`flap_scores` — **FLAP** (An et al., AAAI 2024): fluctuation
  ``Var(x_j) · ‖W[:, j]‖²`` of each input channel of ``o_proj`` / ``down_proj`` (heads: summed over the group's
  channels), standardised per structure and compared globally (adaptive widths); the removed channels' mean
  contribution ``W[:, pruned] · mean(x_pruned)`` becomes a bias of ``o_proj`` / ``down_proj`` (Llama has none: one is
  added, ``hidden`` parameters per projection).
* :func:`wanda_sp_scores` — **Wanda-sp** (structured Wanda as adapted by FLAP's authors):
  ``‖X_j‖₂ · Σ_i |W_ij|`` on the same input channels, uniform ratio per layer.

The budget is always "prunable parameters removed" as :mod:`lightning_prune` counts them (attention + MLP
projections), see :func:`uniform_plan` and :func:`global_plan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int

    @classmethod
    def of(cls, config) -> Shape:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(
            config.num_hidden_layers,
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            head_dim,
            config.intermediate_size,
        )

    @property
    def ratio(self) -> int:  # query heads per KV head
        return self.heads // self.kv_heads

    @property
    def group_params(self) -> int:  # q rows (ratio heads) + k, v rows + o columns, no biases in Llama
        return self.hidden * self.head_dim * (2 * self.ratio + 2)

    @property
    def channel_params(self) -> int:
        return 3 * self.hidden

    @property
    def layer_params(self) -> int:
        return self.kv_heads * self.group_params + self.ffn * self.channel_params

    @property
    def prunable(self) -> int:
        return self.layers * self.layer_params


def _layers(model: nn.Module) -> list[nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return list(base.model.layers)


# -- importance ---------------------------------------------------------------------------------------------------
def _group_rows(shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(q-row group index, k/v-row group index): which KV group each output row of q_proj / k_proj belongs to."""
    q = torch.arange(shape.heads * shape.head_dim) // (shape.head_dim * shape.ratio)
    kv = torch.arange(shape.kv_heads * shape.head_dim) // shape.head_dim
    return q, kv


def _per_group(values: torch.Tensor, index: torch.Tensor, groups: int) -> torch.Tensor:
    return torch.zeros(groups, dtype=values.dtype).index_add_(0, index, values)


def taylor_scores(model: nn.Module, batches: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """LLM-Pruner's first-order importance per layer: ``(groups (kv_heads,), channels (ffn,))``.

    Gradients of the causal-LM loss are summed over ``batches`` (a plain model, all weights trainable for this
    pass only); the element-wise ``|w · g|`` is summed over each group's weights.
    """
    shape = Shape.of(model.config)
    was = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    model.eval()
    for ids in batches:
        (model(input_ids=ids, labels=ids).loss / len(batches)).backward()
    q_idx, kv_idx = _group_rows(shape)
    heads, channels = [], []
    with torch.no_grad():
        for layer in _layers(model):
            a, m = layer.self_attn, layer.mlp
            t = {
                n: (lin.weight * lin.weight.grad).abs()
                for n, lin in dict(
                    q=a.q_proj, k=a.k_proj, v=a.v_proj, o=a.o_proj, g=m.gate_proj, u=m.up_proj, d=m.down_proj
                ).items()
            }
            h = _per_group(t["q"].sum(1), q_idx, shape.kv_heads) + _per_group(t["o"].sum(0), q_idx, shape.kv_heads)
            h += _per_group(t["k"].sum(1) + t["v"].sum(1), kv_idx, shape.kv_heads)
            heads.append(h)
            channels.append(t["g"].sum(1) + t["u"].sum(1) + t["d"].sum(0))
    model.zero_grad(set_to_none=True)
    for p, flag in was.items():
        p.requires_grad_(flag)
    return heads, channels


@torch.no_grad()
def activation_stats(model: nn.Module, batches: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Per layer, for the inputs of ``o_proj`` and ``down_proj``: mean, variance and squared L2 norm per channel
    over every calibration token (float64 running sums)."""
    stats: list[dict[str, torch.Tensor]] = []
    hooks = []
    for layer in _layers(model):
        entry: dict[str, torch.Tensor] = {}
        stats.append(entry)
        for key, lin in (("o", layer.self_attn.o_proj), ("d", layer.mlp.down_proj)):

            def hook(module, args, entry=entry, key=key):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                entry[f"{key}_n"] = entry.get(f"{key}_n", 0) + x.shape[0]
                entry[f"{key}_s"] = entry.get(f"{key}_s", 0) + x.sum(0)
                entry[f"{key}_ss"] = entry.get(f"{key}_ss", 0) + (x * x).sum(0)

            hooks.append(lin.register_forward_pre_hook(hook))
    model.eval()
    try:
        for ids in batches:
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for e in stats:
        row = {}
        for key in ("o", "d"):
            n, s, ss = e[f"{key}_n"], e[f"{key}_s"], e[f"{key}_ss"]
            mean = s / n
            row[f"{key}_mean"] = mean.float()
            row[f"{key}_var"] = ((ss - n * mean * mean) / max(n - 1, 1)).clamp_min(0).float()
            row[f"{key}_sqnorm"] = ss.float()
        out.append(row)
    return out


def flap_scores(model: nn.Module, stats) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """FLAP's fluctuation metric per KV group and per FFN channel (not yet standardised)."""
    shape = Shape.of(model.config)
    q_idx, _ = _group_rows(shape)
    heads, channels = [], []
    for layer, s in zip(_layers(model), stats):
        o = s["o_var"] * layer.self_attn.o_proj.weight.detach().pow(2).sum(0)
        heads.append(_per_group(o, q_idx, shape.kv_heads))
        channels.append(s["d_var"] * layer.mlp.down_proj.weight.detach().pow(2).sum(0))
    return heads, channels


def wanda_sp_scores(model: nn.Module, stats) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Wanda-sp: ``‖X_j‖₂ · Σ_i |W_ij|`` per input channel of ``o_proj`` / ``down_proj``, summed per group."""
    shape = Shape.of(model.config)
    q_idx, _ = _group_rows(shape)
    heads, channels = [], []
    for layer, s in zip(_layers(model), stats):
        o = s["o_sqnorm"].sqrt() * layer.self_attn.o_proj.weight.detach().abs().sum(0)
        heads.append(_per_group(o, q_idx, shape.kv_heads))
        channels.append(s["d_sqnorm"].sqrt() * layer.mlp.down_proj.weight.detach().abs().sum(0))
    return heads, channels


# -- budgets ------------------------------------------------------------------------------------------------------
def uniform_plan(shape: Shape, sparsity: float, skip_first: int = 0, skip_last: int = 0) -> list[tuple[int, int]]:
    """``(KV groups removed, FFN channels removed)`` per layer for a uniform ratio over the pruned layers.

    ``round(r · kv_heads)`` groups per pruned layer (at least one kept), where ``r`` is the sparsity rescaled to
    the pruned layers; FFN channels fill the rest of the budget, spread so that the total is met to one channel.
    Skipped layers (LLM-Pruner keeps the first and last ones) are left whole and the others prune more.
    """
    pruned = list(range(skip_first, shape.layers - skip_last))
    budget = sparsity * shape.prunable
    r = budget / (len(pruned) * shape.layer_params) if pruned else float("inf")
    if r > 0.95:
        raise ValueError(
            f"{sparsity:.0%} of the prunable parameters is {r:.0%} of the {len(pruned)} layers left after skipping "
            f"{skip_first} + {skip_last}: lower `skip_first`/`skip_last` or the sparsity."
        )
    groups = min(shape.kv_heads - 1, round(r * shape.kv_heads))
    channels_total = round((budget - len(pruned) * groups * shape.group_params) / shape.channel_params)
    channels_total = max(0, min(channels_total, len(pruned) * (shape.ffn - 1)))
    base, extra = divmod(channels_total, len(pruned))
    plan = [(0, 0)] * shape.layers
    for i, layer in enumerate(pruned):
        plan[layer] = (groups, base + (1 if i < extra else 0))
    return plan


def global_plan(
    shape: Shape,
    heads: list[torch.Tensor],
    channels: list[torch.Tensor],
    sparsity: float,
    min_groups: int = 1,
    min_channels: int = 1,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """FLAP's adaptive widths: scores z-scored per structure over all layers, then removed lowest first (each unit
    costs its parameters) until the budget is met. Returns kept ``(group ids, channel ids)`` per layer."""

    def z(scores):
        flat = torch.cat(scores)
        return [(s - flat.mean()) / flat.std().clamp_min(1e-12) for s in scores]

    zh, zc = z(heads), z(channels)
    units = [(float(v), l, "g", i) for l, s in enumerate(zh) for i, v in enumerate(s.tolist())]
    units += [(float(v), l, "c", i) for l, s in enumerate(zc) for i, v in enumerate(s.tolist())]
    units.sort(key=lambda u: u[0])
    budget = sparsity * shape.prunable
    kept_g = [set(range(len(s))) for s in heads]
    kept_c = [set(range(len(s))) for s in channels]
    removed = 0.0
    for _, layer, kind, i in units:
        cost = shape.group_params if kind == "g" else shape.channel_params
        if removed + cost / 2 > budget:
            if kind == "g":
                continue  # a group overshoots; FFN channels can still fill the rest
            break
        pool, floor = (kept_g, min_groups) if kind == "g" else (kept_c, min_channels)
        if len(pool[layer]) <= floor:
            continue
        pool[layer].discard(i)
        removed += cost
    return [(torch.tensor(sorted(g)), torch.tensor(sorted(c))) for g, c in zip(kept_g, kept_c)]


def keep_lowest_removed(heads, channels, plan) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Kept ``(group ids, channel ids)`` per layer: the ``plan``'s counts of lowest-scoring units removed."""
    out = []
    for h, c, (g_rm, c_rm) in zip(heads, channels, plan):
        keep_g = torch.sort(torch.argsort(h, descending=True)[: len(h) - g_rm]).values
        keep_c = torch.sort(torch.argsort(c, descending=True)[: len(c) - c_rm]).values
        out.append((keep_g, keep_c))
    return out


# -- surgery ------------------------------------------------------------------------------------------------------
def _slice(
    lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> nn.Linear:
    w = lin.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    b = (
        lin.bias.detach()[rows]
        if lin.bias is not None and rows is not None
        else (lin.bias.detach() if lin.bias is not None else None)
    )
    if bias is not None:
        b = bias if b is None else b + bias
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


@torch.no_grad()
def slice_llama_(model: nn.Module, keep: list[tuple[torch.Tensor, torch.Tensor]], stats=None) -> nn.Module:
    """Remove every KV group / FFN channel not in ``keep`` (in place, plain model before LoRA).

    With ``stats`` (from :func:`activation_stats`) the removed input channels' mean contribution is compensated
    as a bias of ``o_proj`` / ``down_proj`` (FLAP). The config keeps the largest widths (per-layer shapes live in
    the modules; this model is used in-process only).
    """
    shape = Shape.of(model.config)
    for li, (layer, (groups, channels)) in enumerate(zip(_layers(model), keep)):
        a, m = layer.self_attn, layer.mlp
        hd, r = shape.head_dim, shape.ratio
        kv_rows = torch.cat([torch.arange(g * hd, (g + 1) * hd) for g in groups.tolist()])
        q_rows = torch.cat([torch.arange(g * r * hd, (g + 1) * r * hd) for g in groups.tolist()])
        o_bias = d_bias = None
        if stats is not None:
            o_drop = torch.ones(shape.heads * hd, dtype=torch.bool)
            o_drop[q_rows] = False
            d_drop = torch.ones(m.down_proj.in_features, dtype=torch.bool)
            d_drop[channels] = False
            o_bias = a.o_proj.weight[:, o_drop] @ stats[li]["o_mean"][o_drop]
            d_bias = m.down_proj.weight[:, d_drop] @ stats[li]["d_mean"][d_drop]
        a.q_proj = _slice(a.q_proj, rows=q_rows)
        a.k_proj = _slice(a.k_proj, rows=kv_rows)
        a.v_proj = _slice(a.v_proj, rows=kv_rows)
        a.o_proj = _slice(a.o_proj, cols=q_rows, bias=o_bias)
        m.gate_proj = _slice(m.gate_proj, rows=channels)
        m.up_proj = _slice(m.up_proj, rows=channels)
        m.down_proj = _slice(m.down_proj, cols=channels, bias=d_bias)
        m.intermediate_size = len(channels)
    return model


def prunable_params(model: nn.Module) -> int:
    """Weights and biases of every attention and MLP projection (what ``target_sparsity`` is a fraction of)."""
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    total = 0
    for layer in _layers(model):
        for mod in (layer.self_attn, layer.mlp):
            for n in names:
                lin = getattr(mod, n, None)
                if lin is not None:
                    lin = getattr(lin, "base_layer", lin)
                    total += sum(p.numel() for p in lin.parameters())
    return total


def removed_fraction(model: nn.Module, dense_prunable: int) -> float:
    return 1.0 - prunable_params(model) / dense_prunable if dense_prunable else math.nan

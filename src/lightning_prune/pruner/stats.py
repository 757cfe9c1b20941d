"""Statistics worth logging while the gates train: target, expected and exact sparsity, multipliers, kept units."""

from __future__ import annotations

import torch


class StatsMixin:
    """The reporting side of :class:`~lightning_prune.pruner.Pruner`."""

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Scalars worth logging: target, expected and exact sparsity, multipliers, kept units."""
        probs = {name: gate.keep_probability() for name, gate in self.gates.items()}
        masks = _binary(self.deterministic_masks())
        exp_params, exp_flops = self.cost.total(probs)
        out = {
            "target_sparsity": self.current_target(),
            "expected_sparsity": float(self.cost.sparsity(probs, self.config.target)),
            "exact_sparsity": float(self.cost.sparsity(masks, self.config.target)),
            "expected_params": float(exp_params),
            "expected_flops": float(exp_flops),
        }
        scalars = [(name, p) for name, p in self.state.regularizer.named_parameters() if p.numel() == 1]
        short = [name.split(".")[-1] for name, _ in scalars]
        for (name, p), last in zip(scalars, short):  # "lambda_1"; "heads/lambda_1" when several structures have one
            out[last if short.count(last) == 1 else name.replace(".", "/")] = float(p)
        for name, m in masks.items():
            out[f"kept/{name}"] = float(m.sum(-1).float().mean())
        out.update(self.last_terms)
        return out


def _binary(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Kept (1) / pruned (0) indicators of eval masks that may carry scales (``γ · binary``): sizes count units."""
    return {name: (m != 0).to(m.dtype) for name, m in masks.items()}


#: What a model loses when a structure is gone from every layer (the warning's consequence clause).
_EMPTIED_CONSEQUENCE = {
    "heads": "no attention is left, so tokens no longer exchange information (a classifier reading one token sees "
    "only that token; a language model becomes a per-token map)",
    "attn_block": "no attention block is left, so tokens no longer exchange information",
    "ffn": "no MLP channel is left: every layer is attention only",
    "mlp_block": "no MLP block is left: every layer is attention only",
    "hidden": "the residual stream has no dims left, so the model outputs a constant",
}


def emptied_structures_warning(masks: dict[str, torch.Tensor]) -> str | None:
    """A warning naming the structures whose every unit in every row is pruned (``None`` when there is none).

    The export is still exact, but such a model is usually useless: L0 gates at 90% of MiniLM's encoder closed every
    attention head (heads cost 64x an FFN channel, and the Lagrangian's push grows with a unit's cost), and the
    exported classifier answered one class for every input (issue #18, session 7).
    """
    gone = [name for name, m in masks.items() if m.numel() and not bool(m.any())]  # a scaled unit is non-zero
    if not gone:
        return None
    consequences = "; ".join(f"{name}: {_EMPTIED_CONSEQUENCE[name]}" for name in gone if name in _EMPTIED_CONSEQUENCE)
    return (
        f"lightning-prune: every unit of {gone} was pruned in every layer"
        f"{' (' + consequences + ')' if consequences else ''}. The export computes what the gated model did, but "
        "that model has likely collapsed. Lower `target_sparsity`, fix the count per layer with `keep_units` (e.g. "
        f"{ {gone[0]: 1} }), or rank units by importance instead of learned gates (GradualConfig)."
    )


#: How far (absolute sparsity) an export may land from its target before :func:`missed_target_warning` speaks.
TARGET_MISS_TOLERANCE = 0.05


def missed_target_warning(
    exact: float, target: float, method: str, current: float | None = None, match_target: bool | None = None
) -> str | None:
    """A warning when an export's sparsity is more than :data:`TARGET_MISS_TOLERANCE` from its ``target`` (``None``
    otherwise), with the cause: ``current`` is the schedule's target when the export ran (below ``target`` during a
    warm-up), ``match_target`` whether the masks were cut at it.

    With ``match_target`` the exact-target cut meets the current target, so an export misses the final one only when
    training ended during the target's warm-up, or when counts fixed by ``keep_units`` / ``multiple_of`` / ``uniform``
    keep the cut away from it. Without it (STE, polarization's valley, ATP by default, or turned off) the export keeps
    the gates' own decisions, which in a short run can be far from the target: STE at 60% exported the dense model
    after 8 steps, with nothing but the report to say so.
    """
    if abs(exact - target) <= TARGET_MISS_TOLERANCE:
        return None
    head = f"lightning-prune: the export's sparsity is {exact:.3f} for a target of {target:.3f} ({method}): "
    size = f"so the compact model is {'larger' if exact < target else 'smaller'} than asked."
    in_warmup = current is not None and target - current > TARGET_MISS_TOLERANCE
    if in_warmup and abs(exact - current) <= TARGET_MISS_TOLERANCE:
        return (
            f"{head}training ended during the target's warm-up (the schedule asked {current:.3f} at the end), {size} "
            "Train past the warm-up (`warmup_steps` pruning steps after the dense phase) or shorten it."
        )
    if match_target:
        return (
            f"{head}the exact-target cut could not reach it under the counts fixed by `keep_units`, `multiple_of` or "
            f"`uniform`, {size} Loosen those constraints or change the target."
        )
    if method == "ste":
        advice = "Train longer, or freeze the masks before the end with `freeze_after_steps` (STE then projects them "
        advice += "onto the target)."
    elif method == "polarization":
        advice = "Train longer, or use `decision='target'`, which cuts at the target."
    elif method == "pat":
        advice = "Train longer or raise `count_weight`, so the mask loss brings the kept count to `target_hidden_size`."
    else:
        advice = "Train longer, or set `match_target=True` to cut the masks at the target."
    cause = "the masks are the gates' own decisions (`match_target` is off), which had not reached the target"
    return f"{head}{cause} by the end of training, {size} {advice}"

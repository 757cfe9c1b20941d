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

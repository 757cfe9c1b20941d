"""Memory-lean masking op used by the adapters' hooks.

``x * m`` through autograd saves both ``x`` (for the gradient of ``m``) and ``m``: one extra copy of
every masked activation, because the next layer saves ``y = x * m`` as well. :func:`mask_mul` saves only
``y`` (which shares storage with what the next layer saves); the mask gradient ``Σ grad·x`` is recovered as
``(Σ grad·y) / m`` where ``m ≠ 0``.
Where ``m = 0`` the gradient w.r.t. ``m`` is taken as 0. That is exact for hard-concrete gates (a sample
clamped at 0 has zero gradient w.r.t. ``log α`` anyway) and for straight-through/frozen masks (no gradient
flows to a 0/1 mask value through the clamp); gates for which it is not exact opt out by leaving
``Gate.exact_zero_gradient`` False, and hooks then use the plain product.

Saving the output is only valid while nothing modifies it in place. CNNs written the torchvision way do:
``nn.ReLU(inplace=True)`` / ``ReLU6`` / ``Hardswish`` right after a masked BatchNorm, ``out += identity``. For such
a site the hook passes ``keep_input=True``: the op then saves ``x`` (and the mask) and returns a fresh ``y`` that the
in-place op may overwrite; the mask gradient ``Σ grad·x`` is then exact everywhere. It costs what the plain product
costs (one saved activation), which such a site needs anyway: after ``relu_(y)`` only ``relu(y)`` is left, and the
mask gradient needs the values before it.
"""

from __future__ import annotations

import torch


class _MaskMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, keep_input: bool) -> torch.Tensor:  # type: ignore[override]
        y = x * mask.to(x.dtype)
        ctx.mask_shape = mask.shape
        ctx.mask_dtype = mask.dtype
        ctx.keep_input = keep_input
        ctx.save_for_backward(x if keep_input else y, mask)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        try:
            saved, mask = ctx.saved_tensors
        except RuntimeError as err:
            if "inplace operation" not in str(err):
                raise
            raise RuntimeError(
                "lightning-prune: a masked activation was modified in place after its mask (e.g. by "
                "nn.ReLU(inplace=True) or `out += identity`) where the adapter did not expect it, so the memory-lean "
                "mask op lost the values it saved. Adapters pass `keep_input=True` (`pruner.multiply(x, m, "
                "overwritten=True)`) at such sites; the dependency_graph adapter finds them by tracing the model, so "
                "an in-place op that only some inputs trigger is missed: make it out-of-place. "
                f"(autograd: {err})"
            ) from err
        m = mask.to(grad.dtype)
        grad_x = grad * m if ctx.needs_input_grad[0] else None
        grad_m = None
        if ctx.needs_input_grad[1]:
            acc = torch.promote_types(grad.dtype, torch.float32)  # reduce half precision in fp32
            reduced = (grad * saved).to(acc).sum_to_size(ctx.mask_shape)
            if ctx.keep_input:  # Σ grad·x, exact for every unit
                grad_m = reduced.to(ctx.mask_dtype)
            else:
                # Σ grad·x = (Σ grad·y) / m for every unit with m ≠ 0 (x = y / m there): one pass over the
                # activation, the division on the small reduced tensor; units with m = 0 get 0.
                m32 = mask.to(acc)
                nonzero = m32 != 0
                grad_m = torch.where(nonzero, reduced / torch.where(nonzero, m32, torch.ones_like(m32)), 0.0)
                grad_m = grad_m.to(ctx.mask_dtype)
        return grad_x, grad_m, None


def mask_mul(x: torch.Tensor, mask: torch.Tensor, keep_input: bool = False) -> torch.Tensor:
    """``x * mask`` (``mask`` broadcast against ``x``) that saves only its output (or its input) for backward.

    Args:
        x: the activation.
        mask: broadcastable against ``x``.
        keep_input: save ``x`` instead of the output: for a site whose output is modified in place afterwards
            (``nn.ReLU(inplace=True)``, ``out += identity``). The returned tensor is then free to overwrite.
    """
    if not (torch.is_grad_enabled() and (x.requires_grad or mask.requires_grad)):
        return x * mask.to(dtype=x.dtype)
    return _MaskMul.apply(x, mask, keep_input)


def set_kept_count(mask: torch.Tensor, score: torch.Tensor, count: int) -> torch.Tensor:
    """``mask`` (one row, 0 = pruned) changed as little as possible to keep exactly ``count`` units: the
    lowest-scored kept units are dropped, or the best-scored pruned ones restored (with value 1)."""
    kept = mask != 0
    have = int(kept.sum())
    out = mask.clone()
    score = score.float()
    if count < have:
        order = torch.argsort(torch.where(kept, score, torch.full_like(score, float("inf"))))
        out[order[: have - count]] = 0.0
    elif count > have:
        order = torch.argsort(torch.where(kept, torch.full_like(score, -float("inf")), score), descending=True)
        out[order[: count - have]] = 1.0
    return out

"""Memory-lean masking op used by the adapters' hooks.

``x * m`` through autograd saves both ``x`` (for the gradient of ``m``) and ``m``: one extra copy of
every masked activation, because the next layer saves ``y = x * m`` as well. :func:`mask_mul` saves only
``y`` (which shares storage with what the next layer saves) and recovers ``x = y / m`` where ``m ≠ 0``.
Where ``m = 0`` the gradient w.r.t. ``m`` is taken as 0. That is exact for hard-concrete gates (a sample
clamped at 0 has zero gradient w.r.t. ``log α`` anyway) and for straight-through/frozen masks (no gradient
flows to a 0/1 mask value through the clamp); gates for which it is not exact opt out by leaving
``Gate.exact_zero_gradient`` False, and hooks then use the plain product.
"""

from __future__ import annotations

import torch


class _MaskMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x * mask.to(x.dtype)
        ctx.mask_shape = mask.shape
        ctx.mask_dtype = mask.dtype
        ctx.save_for_backward(y, mask)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        y, mask = ctx.saved_tensors
        m = mask.to(grad.dtype)
        grad_x = grad * m if ctx.needs_input_grad[0] else None
        grad_m = None
        if ctx.needs_input_grad[1]:
            safe = torch.where(m != 0, m, torch.ones_like(m))
            x = torch.where(m != 0, y / safe, torch.zeros_like(y))
            grad_m = (grad * x).float().sum_to_size(ctx.mask_shape).to(ctx.mask_dtype)
        return grad_x, grad_m


def mask_mul(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x * mask`` (``mask`` broadcast against ``x``) that saves only its output for backward."""
    if not (torch.is_grad_enabled() and (x.requires_grad or mask.requires_grad)):
        return x * mask.to(dtype=x.dtype)
    return _MaskMul.apply(x, mask)

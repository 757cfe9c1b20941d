"""The equivalence check that makes an export unable to lie.

The compact model must compute what the gated model computes in eval mode. Both run on the same random
inputs; the largest absolute difference of their outputs must stay within ``rtol`` times the largest
absolute output. Tolerances: ``rtol`` (default 1e-4) for fp32; 2e-2 for bf16 and 5e-3 for fp16, whose
rounding differs between a masked and a sliced matmul.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_prune.adapters.base import ModelAdapter
from lightning_prune.errors import ExportMismatchError

HALF_PRECISION_RTOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


@torch.no_grad()
def check_equivalence(
    adapter: ModelAdapter,
    gated: nn.Module,
    compact: nn.Module,
    rtol: float = 1e-4,
    batch_size: int = 2,
    seq_len: int = 16,
    seed: int = 0,
) -> tuple[float, float]:
    """Return ``(max_abs_diff, reference_scale)`` or raise :class:`ExportMismatchError`."""
    generator = torch.Generator().manual_seed(seed)
    device = next(gated.parameters()).device
    inputs = {k: v.to(device) for k, v in adapter.example_inputs(batch_size, seq_len, generator).items()}
    modes = (gated.training, compact.training)
    gated.eval()
    compact.eval()
    try:
        reference = adapter.outputs(gated, inputs).float()
        output = adapter.outputs(compact, inputs).float()
    finally:
        gated.train(modes[0])
        compact.train(modes[1])
    rtol = max(rtol, HALF_PRECISION_RTOL.get(_dtype(gated), 0.0))
    if reference.shape != output.shape:
        raise ExportMismatchError(
            f"The compact model's output has shape {tuple(output.shape)}, the gated model's {tuple(reference.shape)}."
        )
    diff = float((reference - output).abs().max())
    scale = float(reference.abs().max().clamp_min(1e-12))
    if not (diff == diff) or diff > rtol * scale:  # NaN-safe
        raise ExportMismatchError(
            f"The compact model does not compute what the gated model computed: max |gated - compact| = {diff:.3e} "
            f"> {rtol:g} x {scale:.3e}. Nothing was returned or saved. This is a bug in the adapter "
            f"({adapter.name}); please report it with your model config."
        )
    return diff, scale

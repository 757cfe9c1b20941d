"""`mask_mul`: the memory-lean masking op equals the plain product in value and gradients (zero mask gradient
where the mask is exactly 0), for every broadcast the hooks use, and saves only its output."""

from __future__ import annotations

import pytest
import torch

from lightning_prune.ops import mask_mul

SHAPES = [
    ((3, 5, 8), (8,)),  # FFN channels / hidden dims
    ((3, 5, 4, 6), (4, 1)),  # heads: (..., heads, head_dim) against (heads, 1)
    ((3, 5, 8), ()),  # a scalar (block gate, norm scale)
]


@pytest.mark.parametrize("x_shape,m_shape", SHAPES, ids=["channels", "heads", "scalar"])
def test_mask_mul_matches_the_plain_product(x_shape, m_shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=gen, dtype=torch.float64)
    m = torch.rand(m_shape, generator=gen, dtype=torch.float64) + 0.1
    if m.dim():
        m.view(-1)[::3] = 0.0  # exact zeros, as clamped hard-concrete samples have
    grad = torch.randn(x_shape, generator=gen, dtype=torch.float64)

    xa, ma = x.clone().requires_grad_(), m.clone().requires_grad_()
    (mask_mul(xa, ma) * grad).sum().backward()
    xb, mb = x.clone().requires_grad_(), m.clone().requires_grad_()
    (xb * mb * grad).sum().backward()

    assert torch.allclose(mask_mul(x, m), x * m)
    assert torch.allclose(xa.grad, xb.grad)
    expected = torch.where(m != 0, mb.grad, torch.zeros_like(mb.grad))  # the documented convention at m = 0
    assert torch.allclose(ma.grad, expected, rtol=1e-10, atol=1e-12)


def test_mask_mul_in_bf16_keeps_an_fp32_mask_gradient_close_to_the_plain_one():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 16, 32, generator=gen).to(torch.bfloat16).requires_grad_()
    m = (torch.rand(32, generator=gen) + 0.5).requires_grad_()
    mask_mul(x, m).float().sum().backward()
    reference = x.detach().float().sum(dim=(0, 1))
    assert m.grad.dtype == torch.float32
    assert torch.allclose(m.grad, reference, rtol=2e-2, atol=2e-2)


def test_mask_mul_saves_only_its_output():
    x = torch.randn(2, 3, 8, requires_grad=True)
    m = torch.rand(8, requires_grad=True)
    y = mask_mul(x, m)
    saved = y.grad_fn.saved_tensors
    assert len(saved) == 2 and saved[0].data_ptr() == y.data_ptr() and saved[1].numel() == m.numel()

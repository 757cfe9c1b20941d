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


INPLACE = {
    "relu_": torch.relu_,
    "relu6": lambda y: torch.nn.functional.relu6(y, inplace=True),
    "hardswish": lambda y: torch.nn.functional.hardswish(y, inplace=True),
    "add_": lambda y: y.add_(1.5),
}


@pytest.mark.parametrize("op", list(INPLACE))
def test_mask_mul_keeping_its_input_survives_in_place_ops_on_its_output(op):
    """``keep_input=True`` (a site whose output is overwritten, e.g. by ``nn.ReLU(inplace=True)``): the gradients
    are the plain product's, exactly, also at ``m = 0``; the lean op raises an error that names the cause."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64) * 4
    m = torch.rand(4, 1, generator=gen, dtype=torch.float64)
    m[1] = 0.0
    grad = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)

    xa, ma = x.clone().requires_grad_(), m.clone().requires_grad_()
    y = mask_mul(xa, ma, keep_input=True)
    assert y.grad_fn.saved_tensors[0].data_ptr() == xa.data_ptr()  # the input, not the output
    (INPLACE[op](y) * grad).sum().backward()
    xb, mb = x.clone().requires_grad_(), m.clone().requires_grad_()
    (INPLACE[op](xb * mb) * grad).sum().backward()
    assert torch.allclose(xa.grad, xb.grad) and torch.allclose(ma.grad, mb.grad, rtol=1e-10, atol=1e-12)

    lean = mask_mul(x.clone().requires_grad_(), m.clone().requires_grad_())
    with pytest.raises(RuntimeError, match=r"modified in place after its mask.*overwritten=True"):
        (INPLACE[op](lean) * grad).sum().backward()

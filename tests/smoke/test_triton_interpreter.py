"""A tiny Triton kernel runs (in the interpreter on CPU, natively on GPU) and matches torch."""

import torch
import triton
import triton.language as tl


@triton.jit
def _axpy_kernel(x_ptr, y_ptr, out_ptr, alpha, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, alpha * x + y, mask=mask)


def test_axpy_matches_torch():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 1000  # not a multiple of BLOCK: the mask matters
    x = torch.randn(n, device=device)
    y = torch.randn(n, device=device)
    out = torch.empty_like(x)
    _axpy_kernel[(triton.cdiv(n, 256),)](x, y, out, 2.5, n, BLOCK=256)
    torch.testing.assert_close(out, 2.5 * x + y, rtol=1e-6, atol=1e-6)

"""backend='fa4' on the GPU: equals the float64 reference and our kernel on the same lists (poisoned nothing:
FA4 allocates its own output), partial last block, per-head lists, LSE."""

from __future__ import annotations

import pytest
import torch

import jenga
from jenga.kernels.fa4 import fa4_importable

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and fa4_importable()),
                                reason="needs a CUDA GPU and flash-attn-4")


@pytest.mark.parametrize("tokens, density, dtype", [(4_000, 0.3, torch.bfloat16), (8_192, 1.0, torch.float16),
                                                     (5_555, 0.1, torch.bfloat16)])
def test_fa4_matches_the_reference_and_our_kernel(tokens, density, dtype):
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    q, k, v = (torch.randn(1, tokens, 4, 128, device="cuda", dtype=dtype, generator=gen) for _ in range(3))
    blocks = -(-tokens // 128)
    mask = torch.rand(1, 4, blocks, blocks, device="cuda", generator=gen) < density
    mask |= torch.eye(blocks, dtype=torch.bool, device="cuda")
    index, count = jenga.dense_to_lists(mask)
    out, lse = jenga.block_sparse_attention(q, k, v, index, count, backend="fa4", return_lse=True)
    ours = jenga.block_sparse_attention(q, k, v, index, count, backend="triton")
    ref, ref_lse = jenga.block_sparse_attention(q.double(), k.double(), v.double(), index, count, backend="torch",
                                                return_lse=True)
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max().item() < 2e-2
    assert (out.float() - ours.float()).abs().max().item() < 2e-2
    assert torch.allclose(lse.double(), ref_lse.double(), atol=2e-2)

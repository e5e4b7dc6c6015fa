"""Longest-first scheduling (opt-in): query tiles launched in descending list length over all heads give the
same result as the plain order, on the CPU interpreter."""

from __future__ import annotations

import pytest
import torch
from test_attention import golden, needs_triton, random_case, rel_err

from jenga import dense_to_lists


@needs_triton
@pytest.mark.parametrize("block_size", [32, 64])  # one query tile per block, and two (the interpreter's 32 rows)
def test_longest_first_equals_plain_order(block_size):
    from jenga.kernels.triton_block_sparse import block_sparse_attention_triton

    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    # Nq != Nk, a partial last query block, counts varying across query blocks, heads and batch entries
    q, k, v, mask = random_case(2, 150, 230, 2, 16, torch.float32, block_size, 0.5, gen)
    mask[0, 1, 0] = True  # one full list
    mask[1, 0, -1] = False  # one empty list
    kv_index, kv_count = dense_to_lists(mask)
    key_lengths = torch.tensor([230, 190], dtype=torch.int32)
    outs = []
    for longest_first in (False, True):
        out = torch.full_like(q, float("nan"))
        lse = torch.full((2, 2, 150), float("nan"))
        block_sparse_attention_triton(q, k, v, kv_index, kv_count, block_size, key_lengths, 200, 0.3, True,
                                      out=out, lse=lse, longest_first=longest_first)
        outs.append((out, lse))
    (plain, plain_lse), (sorted_out, sorted_lse) = outs
    assert not torch.isnan(sorted_out).any() and not torch.isnan(sorted_lse).any()
    assert torch.equal(sorted_out, plain) and torch.equal(sorted_lse, plain_lse)  # same tiles, same arithmetic
    ref, _ = golden(q, k, v, mask, block_size, key_lengths=key_lengths, key_bias=(200, 0.3))
    assert rel_err(sorted_out, ref) < 2e-5
    assert torch.equal(sorted_out[1, -(150 % block_size or block_size):, 0],
                       torch.zeros_like(sorted_out[1, -(150 % block_size or block_size):, 0]))


@needs_triton
def test_longest_first_from_the_environment(monkeypatch):
    from jenga.kernels import triton_block_sparse as tbs

    seen = []
    real = tbs._block_sparse_fwd

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(kwargs["LONGEST_FIRST"])
                return real[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(tbs, "_block_sparse_fwd", Spy())
    gen = torch.Generator().manual_seed(0)
    q, k, v, mask = random_case(1, 64, 64, 1, 16, torch.float32, 32, 0.5, gen)
    kv_index, kv_count = dense_to_lists(mask)
    tbs.block_sparse_attention_triton(q, k, v, kv_index, kv_count, 32, None, 64, 0.0, False)
    monkeypatch.setenv("JENGA_LONGEST_FIRST", "1")
    tbs.block_sparse_attention_triton(q, k, v, kv_index, kv_count, 32, None, 64, 0.0, False)
    assert seen == [False, True]

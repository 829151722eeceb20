"""The strict sgl_kernel stand-in: its two real ops against plain loops and against SGLang's own Triton
kernels (run by the interpreter on CPU), its strictness, and its loud speculative-decoding names."""

from __future__ import annotations

import pytest
import torch

from adrenaline_sgl.sglang_ext.cpu import sgl_kernel_standin as sk

# --- assign_req_to_token_pool_cpu ---------------------------------------------------------------------


def _assign_reference(req_pool_indices, req_to_token, start, end, out_cache_loc):
    offset = 0
    for row, s, e in zip(req_pool_indices.tolist(), start.tolist(), end.tolist()):
        req_to_token[row, s:e] = out_cache_loc[offset:offset + e - s].to(req_to_token.dtype)
        offset += e - s


ASSIGN_CASES = {
    "one_request": ([2], [0], [5]),
    "mixed_lengths_and_empty": ([3, 0, 5, 1], [4, 0, 7, 2], [9, 3, 7, 40]),  # request 2 writes nothing
    "decode_step": ([0, 1, 2], [10, 11, 12], [11, 12, 13]),  # one new slot each
}


@pytest.mark.parametrize("case", ASSIGN_CASES, ids=list(ASSIGN_CASES))
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_assign_req_to_token_pool_matches_loop(case, index_dtype):
    rows, start, end = (torch.tensor(x, dtype=index_dtype) for x in ASSIGN_CASES[case])
    pool_len = 48
    total = int((end - start).sum())
    out_cache_loc = torch.randperm(1000)[: total + 3].to(torch.int64)  # extra tail slots must stay unused
    got = torch.full((6, pool_len), -1, dtype=torch.int32)
    want = got.clone()
    sk.assign_req_to_token_pool_cpu(rows, got, start, end, out_cache_loc, pool_len)
    _assign_reference(rows, want, start, end, out_cache_loc)
    assert torch.equal(got, want)
    assert (got != -1).sum() == total


def test_assign_req_to_token_pool_matches_sglang_triton_kernel():
    from sglang.srt.mem_cache.allocation import assign_req_to_token_pool

    rows, start, end = (torch.tensor(x) for x in ASSIGN_CASES["mixed_lengths_and_empty"])
    pool_len = 48
    out_cache_loc = torch.randperm(1000)[: int((end - start).sum())].to(torch.int64)
    got = torch.full((6, pool_len), -1, dtype=torch.int32)
    want = got.clone()
    sk.assign_req_to_token_pool_cpu(rows, got, start, end, out_cache_loc, pool_len)
    assign_req_to_token_pool[(rows.numel(),)](rows, want, start, end, out_cache_loc, pool_len, 4)
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(end=torch.tensor([50])), "pool_len=48"),
        (dict(start=torch.tensor([6]), end=torch.tensor([5])), "start_offset <= end_offset"),
        (dict(out_cache_loc=torch.arange(2)), "out_cache_loc has 2 slots"),
        (dict(rows=torch.tensor([[0]])), "req_pool_indices must be a 1-D"),
        (dict(start=torch.tensor([0.0])), "start_offset must be a 1-D int32/int64"),
    ],
)
def test_assign_req_to_token_pool_rejects_bad_input(bad, match):
    args = dict(rows=torch.tensor([0]), start=torch.tensor([0]), end=torch.tensor([5]), out_cache_loc=torch.arange(5))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        sk.assign_req_to_token_pool_cpu(args["rows"], torch.zeros(2, 48, dtype=torch.int32), args["start"],
                                        args["end"], args["out_cache_loc"], 48)


# --- copy_all_layer_kv_cache_cpu ----------------------------------------------------------------------


def _pools():
    """Three buffers shaped like per-layer K/V pools with different row strides: [rows, heads, dim]."""
    torch.manual_seed(0)
    return [
        torch.randn(16, 3, 8, dtype=torch.bfloat16),  # 48 bytes per row
        torch.randn(16, 3, 8, dtype=torch.bfloat16),
        torch.randn(16, 2, 4, dtype=torch.float32),  # 32 bytes per row
    ]


def _ptrs_strides(pools):
    ptrs = torch.tensor([p.data_ptr() for p in pools], dtype=torch.int64)
    strides = torch.tensor([p[0].numel() * p.element_size() for p in pools], dtype=torch.int64)
    return ptrs, strides


COPY_CASES = {
    "disjoint": ([9, 10, 11], [0, 1, 2]),
    "overlapping_shift": ([1, 2, 3], [0, 1, 2]),  # must read the old rows 1 and 2, not the new ones
    "swap": ([4, 5], [5, 4]),
    "single": ([15], [0]),
}


@pytest.mark.parametrize("case", COPY_CASES, ids=list(COPY_CASES))
def test_copy_all_layer_kv_cache_gathers_before_scatter(case):
    tgt, src = (torch.tensor(x) for x in COPY_CASES[case])
    pools = _pools()
    want = [p.clone() for p in pools]
    for w in want:
        w[tgt] = w[src].clone()
    sk.copy_all_layer_kv_cache_cpu(*_ptrs_strides(pools), tgt, src)
    for got, expected in zip(pools, want):
        assert torch.equal(got, expected)


def test_copy_all_layer_kv_cache_matches_sglang_triton_kernel():
    from sglang.kernels.ops.kvcache.cache_move import copy_all_layer_kv_cache_tiled

    tgt, src = (torch.tensor(x) for x in COPY_CASES["overlapping_shift"])
    ours, theirs = _pools(), _pools()
    sk.copy_all_layer_kv_cache_cpu(*_ptrs_strides(ours), tgt, src)
    ptrs, strides = _ptrs_strides(theirs)
    copy_all_layer_kv_cache_tiled[(len(theirs), 1)](ptrs, strides, tgt, src, tgt.numel(), 4, BYTES_PER_TILE=64)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_copy_all_layer_kv_cache_rejects_bad_input():
    pools = _pools()
    ptrs, strides = _ptrs_strides(pools)
    with pytest.raises(ValueError, match="tgt_loc and src_loc must have equal length"):
        sk.copy_all_layer_kv_cache_cpu(ptrs, strides, torch.tensor([1, 2]), torch.tensor([0]))
    with pytest.raises(ValueError, match="data_ptrs and strides"):
        sk.copy_all_layer_kv_cache_cpu(ptrs, strides[:2], torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="non-negative"):
        sk.copy_all_layer_kv_cache_cpu(ptrs, strides, torch.tensor([-1]), torch.tensor([0]))
    before = [p.clone() for p in pools]
    sk.copy_all_layer_kv_cache_cpu(ptrs, strides, torch.tensor([], dtype=torch.int64),
                                   torch.tensor([], dtype=torch.int64))
    assert all(torch.equal(a, b) for a, b in zip(pools, before))


# --- strictness -----------------------------------------------------------------------------------------


def test_exports_exactly_the_names_sglang_imports_on_the_cpu_path():
    assert set(sk.__all__) == {
        "copy_all_layer_kv_cache_cpu", "assign_req_to_token_pool_cpu",
        "build_tree_kernel_efficient_cpu", "verify_tree_greedy_cpu", "assign_draft_cache_locs_contiguous_cpu",
        "assign_extend_cache_locs_cpu", "fill_accept_out_cache_loc_cpu", "fill_bonus_tokens_cpu",
        "rotate_input_ids_cpu",
    }
    assert not hasattr(sk, "__getattr__")  # a module __getattr__ would answer every `from sgl_kernel import X`


@pytest.mark.parametrize("name", [n for n in sk.__all__ if n not in
                                  ("copy_all_layer_kv_cache_cpu", "assign_req_to_token_pool_cpu")])
def test_speculative_names_fail_loudly(name):
    with pytest.raises(NotImplementedError, match=f"sgl_kernel.{name}: not provided"):
        getattr(sk, name)(torch.zeros(1))

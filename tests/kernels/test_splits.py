"""The split heuristic: pure host code, checked for its invariants over many batches."""

from __future__ import annotations

from adrenaline_kernels.splits import (
    MAX_SPLITS,
    MIN_BLOCKS_PER_SPLIT,
    WAVES,
    block_h_for,
    cdiv,
    plan_num_splits,
)
from hypothesis import given, settings
from hypothesis import strategies as st

lens_st = st.lists(st.integers(min_value=0, max_value=200_000), min_size=1, max_size=64)


@settings(max_examples=200, deadline=None)
@given(lens=lens_st, hkv=st.integers(1, 64), sms=st.integers(1, 256), block_n=st.sampled_from([16, 32, 64, 128]))
def test_invariants(lens, hkv, sms, block_n):
    splits = plan_num_splits(lens, hkv, 1, sms, block_n)
    assert len(splits) == len(lens)
    for n, s in zip(lens, splits):
        assert 1 <= s <= MAX_SPLITS
        if n == 0:
            assert s == 1
        elif s > 1:  # a split never gets fewer than MIN_BLOCKS_PER_SPLIT blocks on average
            assert cdiv(n, block_n) >= s * MIN_BLOCKS_PER_SPLIT
    ordered = sorted(zip(lens, splits))
    assert all(a[1] <= b[1] for a, b in zip(ordered, ordered[1:])), "a longer request never gets fewer splits"


@settings(max_examples=100, deadline=None)
@given(lens=lens_st, hkv=st.integers(1, 16), sms=st.integers(1, 128))
def test_more_sms_never_fewer_splits(lens, hkv, sms):
    few = plan_num_splits(lens, hkv, 1, sms, 64)
    many = plan_num_splits(lens, hkv, 1, 2 * sms, 64)
    assert all(m >= f for f, m in zip(few, many))


def test_named_shapes():
    # Batch 1, Llama-2 7B (32 KV heads), 4096 tokens on 132 SMs: 32 programs per split, 2 waves want 9 splits.
    assert plan_num_splits([4096], 32, 1, 132, 64) == [cdiv(WAVES * 132, 32)]
    # Batch 128 already has 128 * 32 programs, far more than 2 waves: no splitting.
    assert plan_num_splits([4096] * 128, 32, 1, 132, 64) == [1] * 128
    # Short requests are not split below MIN_BLOCKS_PER_SPLIT blocks.
    assert plan_num_splits([64, 128, 256], 1, 1, 1000, 64) == [1, 1, 2]
    assert plan_num_splits([], 8, 1, 132, 64) == []


def test_block_h():
    assert [block_h_for(g) for g in (1, 3, 4, 8, 16, 17, 32, 64, 128)] == [16, 16, 16, 16, 16, 32, 32, 64, 64]

"""The split heuristic: pure host code, checked for its invariants over many batches."""

from __future__ import annotations

from adrenaline_kernels.splits import (
    MANY_WAVES,
    MAX_SPLITS,
    MIN_BLOCKS_PER_SPLIT,
    RESIDENT_PER_SM,
    WAVE_EFFICIENCY_SLACK,
    block_h_for,
    cdiv,
    plan_num_splits,
    splits_for_waves,
    wave_efficiency,
)
from hypothesis import given, settings
from hypothesis import strategies as st

lens_st = st.lists(st.integers(min_value=0, max_value=200_000), min_size=1, max_size=64)


@settings(max_examples=100, deadline=None)
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
@given(base=st.integers(1, 20_000), slots=st.integers(1, 2_000), max_splits=st.integers(1, 64))
def test_wave_rule_is_near_best_and_smallest(base, slots, max_splits):
    s = splits_for_waves(base, slots, max_splits)
    assert 1 <= s <= max_splits
    if base >= MANY_WAVES * slots:
        assert s == 1
        return
    effs = [wave_efficiency(base * k, slots) for k in range(1, max_splits + 1)]
    assert effs[s - 1] >= WAVE_EFFICIENCY_SLACK * max(effs)
    assert all(e < WAVE_EFFICIENCY_SLACK * max(effs) for e in effs[: s - 1]), "not the smallest such count"


def test_named_shapes():
    slots = 132 * RESIDENT_PER_SM  # H100
    # Batch 1, Llama-2 7B (32 KV heads), 4096 tokens: 32 programs per split; 14 splits fill 84% of a wave.
    assert plan_num_splits([4096], 32, 1, 132, 64) == [14]
    assert wave_efficiency(32 * 14, slots) >= 0.84  # the best, 32 splits, reaches 0.97 (0.85 x 0.97 = 0.82)
    # Batch 128 already has 128 * 32 programs, almost 8 waves at 97% efficiency: no splitting.
    assert plan_num_splits([4096] * 128, 32, 1, 132, 64) == [1] * 128
    # Short requests are not split below MIN_BLOCKS_PER_SPLIT blocks; longer ones get proportionally more.
    assert plan_num_splits([64, 128, 256, 1024], 1, 1, 1000, 64) == [1, 1, 2, 7]  # 7 of 8 is within 85%
    assert plan_num_splits([], 8, 1, 132, 64) == []


def test_block_h():
    assert [block_h_for(g) for g in (1, 3, 4, 8, 16, 17, 32, 64, 128)] == [16, 16, 16, 16, 16, 32, 32, 64, 64]

"""Property: any sequence of adopt / step / abort / release never leaks or double-frees a slot."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adrenaline_sgl.offload.errors import PoolFullError, UnknownRequestError
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool

from .conftest import HKV, HQ, LAYERS, D

NUM_SLOTS = 24

ops = st.lists(
    st.one_of(
        st.tuples(st.just("adopt"), st.integers(0, 5), st.integers(1, 9)),  # rid index, prompt tokens
        st.tuples(st.just("step"), st.sets(st.integers(0, 5), max_size=6), st.booleans()),  # batch, abort after
        st.tuples(st.just("release"), st.integers(0, 5), st.just(0)),
    ),
    max_size=25,
)


def _check_invariants(ex: AttentionExecutor) -> None:
    alloc = ex.pool.allocator
    free = alloc._free.tolist()
    held = torch.cat([r.slots[: r.length].cpu() for r in ex._requests.values()]).tolist() if ex._requests else []
    assert len(set(free)) == len(free), "a slot is twice in the free list"
    assert len(set(held)) == len(held), "a slot belongs to two requests (or twice to one)"
    assert not set(free) & set(held), "a held slot is also free"
    assert len(free) + len(held) == NUM_SLOTS, "a slot leaked"
    assert int(ex._held.sum()) == len(held)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_random_sequences_never_leak_or_double_free(sequence):
    ex = AttentionExecutor(KVPool.standalone(LAYERS, NUM_SLOTS, HKV, D), "reference")
    for op, a, b in sequence:
        if op == "adopt":
            rid = f"r{a}"
            if rid in ex._requests:
                continue
            try:
                ex.adopt_copy(rid, torch.randn(LAYERS, b, HKV, D), torch.randn(LAYERS, b, HKV, D))
            except PoolFullError:
                pass
        elif op == "step":
            rids = [f"r{i}" for i in sorted(a) if f"r{i}" in ex._requests]
            try:
                ex.begin_step(rids)
            except PoolFullError:
                _check_invariants(ex)
                continue
            n = len(rids)
            ex.step(0, rids, torch.randn(n, HQ, D), torch.randn(n, HKV, D), torch.randn(n, HKV, D))
            if b:
                ex.abort_step()
        else:
            try:
                ex.release(f"r{a}")
            except UnknownRequestError:
                assert f"r{a}" not in ex._requests
        _check_invariants(ex)
    for rid in list(ex._requests):
        ex.release(rid)
    assert ex.pool.allocator.available_size() == NUM_SLOTS

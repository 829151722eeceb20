"""Property: any sequence of adopt / step / abort / release / disconnect, by up to three clients of one executor,
never leaks or double-frees a slot."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adrenaline_sgl.offload.errors import OffloadError, PoolFullError, UnknownRequestError
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool

from .conftest import HKV, HQ, LAYERS, D

NUM_SLOTS = 24

ops = st.lists(
    st.one_of(
        st.tuples(st.just("adopt"), st.integers(0, 5), st.integers(1, 9)),  # rid index, prompt tokens
        # client, batch, layers run (LAYERS: the step is complete), abort after
        st.tuples(st.just("step"), st.integers(0, 2), st.sets(st.integers(0, 5), max_size=6),
                  st.integers(0, LAYERS), st.booleans()),
        st.tuples(st.just("release"), st.integers(0, 5)),
        st.tuples(st.just("disconnect"), st.integers(0, 2)),
    ),
    max_size=30,
)


def _check_invariants(ex: AttentionExecutor) -> None:
    alloc = ex.pool.allocator
    free = alloc._free.tolist()
    held = torch.cat([r.slots[: r.length].cpu() for r in ex._requests.values()]).tolist() if ex._requests else []
    held += [slot for state in ex._clients.values() for slot in state.deferred]  # rows released mid-step
    assert len(set(free)) == len(free), "a slot is twice in the free list"
    assert len(set(held)) == len(held), "a slot belongs to two requests (or twice to one)"
    assert not set(free) & set(held), "a held slot is also free"
    assert len(free) + len(held) == NUM_SLOTS, "a slot leaked"
    assert int(ex._held.sum()) == len(held)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_random_sequences_never_leak_or_double_free(sequence):
    ex = AttentionExecutor(KVPool.standalone(LAYERS, NUM_SLOTS, HKV, D), "reference")
    for op, *args in sequence:
        if op == "adopt":
            rid, tokens = f"r{args[0]}", args[1]
            if rid in ex._requests:
                continue
            try:
                ex.adopt_copy(rid, torch.randn(LAYERS, tokens, HKV, D), torch.randn(LAYERS, tokens, HKV, D))
            except PoolFullError:
                pass
        elif op == "step":
            client, batch, layers, abort = f"c{args[0]}", *args[1:]
            rids = [f"r{i}" for i in sorted(batch) if f"r{i}" in ex._requests]
            try:
                ex.begin_step(rids, client)
            except PoolFullError:
                _check_invariants(ex)
                continue
            except OffloadError as err:  # a request in another client's unfinished step
                assert "another client's unfinished step" in str(err)
                _check_invariants(ex)
                continue
            n = len(rids)
            for layer in range(layers):
                ex.step(layer, rids, torch.randn(n, HQ, D), torch.randn(n, HKV, D), torch.randn(n, HKV, D), client)
            if abort:
                ex.abort_step(client)
        elif op == "release":
            try:
                ex.release(f"r{args[0]}")
            except UnknownRequestError:
                assert f"r{args[0]}" not in ex._requests
        else:
            ex.end_client(f"c{args[0]}")
        _check_invariants(ex)
    for rid in list(ex._requests):
        ex.release(rid)
    _check_invariants(ex)
    assert ex.pool.allocator.available_size() == NUM_SLOTS

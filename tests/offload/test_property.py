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


def _run(sequence):
    test_random_sequences_never_leak_or_double_free.hypothesis.inner_test(sequence)


def test_an_id_adopted_again_after_a_mid_step_release_is_a_new_request():
    """Found by the property: release r0 mid-step, adopt r0 again, disconnect. The rollback took the new r0 for
    the step's row (by id) and freed the step's slot a second time (SlotError: double free)."""
    _run([("adopt", 0, 1), ("adopt", 1, 1), ("step", 0, {0, 1}, 1, False), ("release", 0), ("adopt", 0, 1),
          ("disconnect", 0)])


def test_an_id_adopted_again_after_a_complete_step_survives_an_abort():
    """The same with an abort of the completed step after the id came back: the new request keeps its length."""
    ex = AttentionExecutor(KVPool.standalone(LAYERS, NUM_SLOTS, HKV, D), "reference")
    ex.adopt_copy("r0", torch.randn(LAYERS, 2, HKV, D), torch.randn(LAYERS, 2, HKV, D))
    ex.begin_step(["r0"], "c0")
    for layer in range(LAYERS):
        ex.step(layer, ["r0"], torch.randn(1, HQ, D), torch.randn(1, HKV, D), torch.randn(1, HKV, D), "c0")
    ex.release("r0")
    ex.adopt_copy("r0", torch.randn(LAYERS, 3, HKV, D), torch.randn(LAYERS, 3, HKV, D))
    ex.abort_step("c0")
    assert ex._requests["r0"].length == 3
    _check_invariants(ex)

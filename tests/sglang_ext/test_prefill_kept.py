"""KeptKV with an executor: two offloaded requests whose prompts share radix-cached prefix slots."""

import types

import pytest
import torch

from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.sglang_ext.prefill_kept import KeptKV

LAYERS, SLOTS, HKV, D = 2, 32, 2, 4


def _req(rid: str, row: int, slots: list[int], req_to_token: torch.Tensor):
    req_to_token[row, : len(slots)] = torch.tensor(slots, dtype=torch.int32)
    return types.SimpleNamespace(rid=rid, kv=types.SimpleNamespace(req_pool_idx=row, kv_allocated_len=len(slots),
                                                                   cache_protected_len=3))  # fmt: skip


@pytest.fixture
def setup():
    pool = KVPool.standalone(LAYERS, SLOTS, HKV, D)
    g = torch.Generator().manual_seed(0)
    for layer in range(LAYERS):  # what the prefill forwards wrote, one distinct vector per slot
        pool.k_buffers[layer].copy_(torch.randn(SLOTS, HKV, D, generator=g))
        pool.v_buffers[layer].copy_(torch.randn(SLOTS, HKV, D, generator=g))
    executor = AttentionExecutor(pool, attention="reference")
    tree = types.SimpleNamespace(req_to_token_pool=types.SimpleNamespace(
        req_to_token=torch.zeros(4, 16, dtype=torch.int32)))  # fmt: skip
    return pool, executor, tree, KeptKV(HKV * D * 4 * 2 * LAYERS, executor)


def test_requests_on_a_shared_prefix_both_read_it_in_place(setup):
    """Issue 18 defect 1: the second request on a cached prefix used to get a private copy of its prompt in the
    executor's reserve (`adopt_copy`), which filled the reserve under load and crashed the scheduler. The executor
    only reads adopted slots, and SGLang keeps a matched prefix alive while each request holds it: both adopt in
    place, nothing is allocated, and releasing one leaves the other's KV readable."""
    pool, executor, tree, kept = setup
    released = []
    # both matched the cached prefix in slots 20, 21, 22; their own tokens sit in 23 and 24
    a = _req("a", 0, [20, 21, 22, 23], tree.req_to_token_pool.req_to_token)
    b = _req("b", 1, [20, 21, 22, 24], tree.req_to_token_pool.req_to_token)
    free_before = pool.allocator.available_size()
    kept.keep(a, tree, lambda: released.append("a"), "room-a")
    kept.keep(b, tree, lambda: released.append("b"), "room-b")
    assert executor.seq_len("room-a") == 4 and executor.seq_len("room-b") == 4
    assert pool.allocator.available_size() == free_before  # no copy
    assert executor._requests["room-b"].slots[:4].tolist() == [20, 21, 22, 24]
    assert kept.release("room-a") and "room-b" in executor.rids
    executor.begin_step(["room-b"])  # b still decodes over the shared prefix
    q = torch.randn(1, HKV, D)
    kn, vn = torch.randn(1, HKV, D), torch.randn(1, HKV, D)
    o, _ = executor.step(0, ["room-b"], q, kn, vn)
    keys = torch.cat([pool.k_buffers[0][torch.tensor([20, 21, 22, 24])], kn])  # [5, Hkv, D]
    vals = torch.cat([pool.v_buffers[0][torch.tensor([20, 21, 22, 24])], vn])
    scores = torch.einsum("hd,thd->ht", q[0], keys) * D**-0.5
    torch.testing.assert_close(o[0], torch.einsum("ht,thd->hd", scores.softmax(-1), vals))
    assert kept.release("room-b") and released == ["a", "b"]
    assert pool.allocator.available_size() == free_before and executor.rids == []
    executor.adopt("c", torch.tensor([20, 21]))  # no slot left marked: an owning adoption of them is accepted


def test_other_slot_errors_still_raise(setup):
    from adrenaline_sgl.offload.errors import SlotError

    _, _, tree, kept = setup
    bad = _req("bad", 0, [5, 5, 6], tree.req_to_token_pool.req_to_token)  # repeated slots: a real bug upstream
    with pytest.raises(SlotError, match="repeated"):
        kept.keep(bad, tree, lambda: None, "room-bad")

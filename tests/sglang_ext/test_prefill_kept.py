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


def test_second_request_on_a_shared_prefix_gets_a_private_copy(setup):
    pool, executor, tree, kept = setup
    released = []
    # both matched the cached prefix in slots 20, 21, 22; their own tokens sit in 23 and 24
    a = _req("a", 0, [20, 21, 22, 23], tree.req_to_token_pool.req_to_token)
    b = _req("b", 1, [20, 21, 22, 24], tree.req_to_token_pool.req_to_token)
    kept.keep(a, tree, lambda: released.append("a"), "room-a")
    free_before = pool.allocator.available_size()
    kept.keep(b, tree, lambda: released.append("b"), "room-b")  # stock adopt would raise SlotError
    assert executor.seq_len("room-a") == 4 and executor.seq_len("room-b") == 4
    assert pool.allocator.available_size() == free_before - 4  # b's copy lives in slots the executor allocated
    b_slots = executor._requests["room-b"].slots[:4].cpu()
    assert not set(b_slots.tolist()) & {20, 21, 22, 23, 24}
    src = torch.tensor([20, 21, 22, 24])
    for layer in range(LAYERS):  # the copy is b's prompt KV, token for token
        assert torch.equal(pool.k_buffers[layer][b_slots], pool.k_buffers[layer][src])
        assert torch.equal(pool.v_buffers[layer][b_slots], pool.v_buffers[layer][src])
    assert kept.release("room-b") and kept.release("room-a")
    assert released == ["b", "a"] and pool.allocator.available_size() == free_before  # the copy freed


def test_other_slot_errors_still_raise(setup):
    from adrenaline_sgl.offload.errors import SlotError

    _, _, tree, kept = setup
    bad = _req("bad", 0, [5, 5, 6], tree.req_to_token_pool.req_to_token)  # repeated slots: a real bug upstream
    with pytest.raises(SlotError, match="repeated"):
        kept.keep(bad, tree, lambda: None, "room-bad")

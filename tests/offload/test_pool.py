"""SlotAllocator and KVPool: SGLang's allocator interface, refusal of double frees, layout validation."""

import pytest
import torch

from adrenaline_sgl.offload.errors import SlotError
from adrenaline_sgl.offload.pool import KVPool, SlotAllocator


def test_alloc_free_roundtrip_keeps_every_slot_exactly_once():
    alloc = SlotAllocator(10, first_slot=1)
    a = alloc.alloc(4)
    b = alloc.alloc(5)
    assert alloc.alloc(1) is None  # 9 usable slots, all taken
    assert sorted(torch.cat([a, b]).tolist()) == list(range(1, 10))
    alloc.free(a)
    assert alloc.available_size() == 4
    c = alloc.alloc(4)
    assert sorted(c.tolist()) == sorted(a.tolist())


def test_alloc_too_many_takes_nothing():
    alloc = SlotAllocator(8)
    assert alloc.alloc(9) is None
    assert alloc.available_size() == 8


@pytest.mark.parametrize("bad", [[3, 3], [20], [-1]])
def test_bad_free_is_refused_and_changes_nothing(bad):
    alloc = SlotAllocator(16)
    taken = alloc.alloc(4)
    if bad == [3, 3]:
        bad = [int(taken[0]), int(taken[0])]
    with pytest.raises(SlotError):
        alloc.free(torch.tensor(bad))
    assert alloc.available_size() == 12


def test_double_free_is_refused():
    alloc = SlotAllocator(16)
    slots = alloc.alloc(3)
    alloc.free(slots)
    with pytest.raises(SlotError, match="double free"):
        alloc.free(slots[:1])
    assert alloc.available_size() == 16


def test_standalone_pool_has_sglang_layer_layout():
    pool = KVPool.standalone(num_layers=3, num_slots=32, num_kv_heads=2, head_dim=8)
    assert len(pool.k_buffers) == 3 and pool.k_buffers[1].shape == (32, 2, 8)
    assert pool.bytes_per_slot == 2 * 3 * 2 * 8 * 4


def test_pool_rejects_mismatched_layers():
    k = [torch.zeros(8, 2, 4), torch.zeros(8, 2, 5)]
    with pytest.raises(ValueError, match=r"k_buffers\[1\]"):
        KVPool(k, [torch.zeros(8, 2, 4)] * 2, SlotAllocator(8))
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        KVPool.standalone(0, 8, 2, 4)

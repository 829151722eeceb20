"""KV pools in SGLang's `MHATokenToKVPool` layer layout, and a slot allocator with SGLang's interface.

Layout (the SGLang plugin hands the prefill engine's own buffers over without a copy):
    k_buffers[layer]  [num_slots, Hkv, D]      v_buffers[layer]  [num_slots, Hkv, D]
A request's KV is a list of token slots (rows of every layer's buffer), in sequence order.

`SlotAllocator` and `ReservedSlots` have the duck interface of SGLang's `TokenToKVPoolAllocator`
(`alloc(n) -> Tensor | None`, `free(slots)`, `available_size()`), so a shared pool can use the prefill
engine's own allocator instead.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .errors import SlotError


class Allocator(Protocol):
    def alloc(self, need_size: int) -> torch.Tensor | None: ...

    def free(self, free_index: torch.Tensor) -> None: ...

    def available_size(self) -> int: ...


class SlotAllocator:
    """Free list over slots `[first_slot, num_slots)` that refuses double frees and foreign slots.

    NOTE: SGLang keeps slot 0 as a padding slot; `first_slot=1` reproduces that for a shared pool.
    """

    def __init__(self, num_slots: int, first_slot: int = 0):
        if num_slots <= first_slot:
            raise ValueError(f"num_slots must be > first_slot ({first_slot}), got {num_slots}")
        if first_slot < 0:
            raise ValueError(f"first_slot must be >= 0, got {first_slot}")
        self.num_slots = num_slots
        self.first_slot = first_slot
        self._free = torch.arange(first_slot, num_slots, dtype=torch.int64)  # [num_free] stack, pop from the end
        self._is_free = torch.zeros(num_slots, dtype=torch.bool)
        self._is_free[first_slot:] = True

    @property
    def capacity(self) -> int:
        return self.num_slots - self.first_slot

    def available_size(self) -> int:
        return int(self._free.numel())

    def alloc(self, need_size: int) -> torch.Tensor | None:
        """`need_size` slots `[need_size]` int64, or None (nothing taken) when too few are free."""
        if need_size < 0:
            raise ValueError(f"need_size must be >= 0, got {need_size}")
        if need_size > self._free.numel():
            return None
        cut = self._free.numel() - need_size
        slots = self._free[cut:].flip(0).clone()
        self._free = self._free[:cut]
        self._is_free[slots] = False
        return slots

    def free(self, free_index: torch.Tensor) -> None:
        """Return slots to the free list; raises `SlotError` (changing nothing) on a double or foreign free."""
        slots = free_index.to(torch.int64).flatten().cpu()
        if slots.numel() == 0:
            return
        if int(slots.min()) < self.first_slot or int(slots.max()) >= self.num_slots:
            raise SlotError(f"free: slots must lie in [{self.first_slot}, {self.num_slots}), got {slots.tolist()}")
        if slots.unique().numel() != slots.numel() or bool(self._is_free[slots].any()):
            raise SlotError(f"free: double free of slots {slots[self._is_free[slots]].tolist() or slots.tolist()}")
        self._is_free[slots] = True
        self._free = torch.cat([self._free, slots.flip(0)])


class ReservedSlots:
    """An allocator over a set of slots taken from another allocator (the prefill executor's block of SGLang's
    pool), so that the executor's thread never touches that allocator (the `Allocator` protocol). The owner of
    that allocator may `grow` and `shrink` the set from its own thread (thread-safe here)."""

    def __init__(self, slots: torch.Tensor):
        self.slots = slots.to(torch.int64).flatten().cpu()
        self._free = list(reversed(self.slots.tolist()))  # stack, pop from the end
        self._owned = set(self._free)
        self._lock = threading.Lock()

    def available_size(self) -> int:
        return len(self._free)

    def alloc(self, need_size: int) -> torch.Tensor | None:
        with self._lock:
            if need_size > len(self._free):
                return None
            taken = [self._free.pop() for _ in range(need_size)]
        return torch.tensor(taken, dtype=torch.int64)

    def free(self, free_index: torch.Tensor) -> None:
        slots = free_index.to(torch.int64).flatten().tolist()
        with self._lock:
            foreign = [s for s in slots if s not in self._owned]
            if foreign:
                raise SlotError(f"free: slots {foreign} were not reserved for the executor")
            self._free.extend(slots)

    @property
    def capacity(self) -> int:
        """Slots this allocator owns now, free or not (changed by `grow` and `shrink`)."""
        with self._lock:
            return len(self._owned)

    def grow(self, slots: torch.Tensor) -> None:
        """Take more slots (from the same other allocator, by its owner's thread), free at once."""
        added = slots.to(torch.int64).flatten().tolist()
        with self._lock:
            if self._owned.intersection(added) or len(set(added)) != len(added):
                raise SlotError(f"grow: slots {added} are repeated or already reserved")
            self._owned.update(added)
            self._free.extend(added)

    def take_back(self, slots: torch.Tensor) -> bool:
        """Un-reserve `slots` (a block given to `grow`) if every one of them is free now, else change nothing and
        return False; on True the caller returns them to the allocator they came from. All or nothing, so a
        paged allocator gets back whole pages only."""
        back = slots.to(torch.int64).flatten().tolist()
        with self._lock:
            free = set(self._free)
            if not all(s in free for s in back):
                return False
            gone = set(back)
            self._free = [s for s in self._free if s not in gone]
            self._owned.difference_update(gone)
            return True


@dataclass
class KVPool:
    """Per-layer K and V buffers `[num_slots, Hkv, D]` plus the allocator that owns their slots."""

    k_buffers: Sequence[torch.Tensor]
    v_buffers: Sequence[torch.Tensor]
    allocator: Allocator

    def __post_init__(self):
        if len(self.k_buffers) == 0 or len(self.k_buffers) != len(self.v_buffers):
            raise ValueError(
                f"k_buffers and v_buffers must be non-empty and of equal length (one per layer), "
                f"got {len(self.k_buffers)} and {len(self.v_buffers)}"
            )
        shape, dtype, device = self.k_buffers[0].shape, self.k_buffers[0].dtype, self.k_buffers[0].device
        if len(shape) != 3:
            raise ValueError(f"k_buffers[layer] must be [num_slots, Hkv, D], got shape {tuple(shape)}")
        for name, bufs in (("k_buffers", self.k_buffers), ("v_buffers", self.v_buffers)):
            for layer, buf in enumerate(bufs):
                if buf.shape != shape or buf.dtype != dtype or buf.device != device:
                    raise ValueError(
                        f"{name}[{layer}] is {tuple(buf.shape)} {buf.dtype} on {buf.device}; every layer must be "
                        f"{tuple(shape)} {dtype} on {device}"
                    )

    @classmethod
    def standalone(
        cls,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> KVPool:
        """A pool that owns its buffers and slots (the adoption-by-copy case)."""
        for name, value in (("num_layers", num_layers), ("num_slots", num_slots), ("num_kv_heads", num_kv_heads),
                            ("head_dim", head_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        k = [torch.zeros(num_slots, num_kv_heads, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        v = [torch.zeros(num_slots, num_kv_heads, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        return cls(k, v, SlotAllocator(num_slots))

    @property
    def num_layers(self) -> int:
        return len(self.k_buffers)

    @property
    def num_slots(self) -> int:
        return int(self.k_buffers[0].shape[0])

    @property
    def num_kv_heads(self) -> int:
        return int(self.k_buffers[0].shape[1])

    @property
    def head_dim(self) -> int:
        return int(self.k_buffers[0].shape[2])

    @property
    def dtype(self) -> torch.dtype:
        return self.k_buffers[0].dtype

    @property
    def device(self) -> torch.device:
        return self.k_buffers[0].device

    @property
    def bytes_per_slot(self) -> int:
        """K and V bytes of one token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.k_buffers[0].element_size()

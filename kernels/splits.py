"""How many KV splits each request gets, and the tile sizes of the decode kernel.

Decode attention is memory-bound: the kernel reaches HBM bandwidth only when enough programs are resident
to keep every SM's loads in flight, and it loses the idle tail when the last wave of programs is partly
empty. Programs per split are B x Hkv x head_tiles; splitting each request's KV multiplies that. The split
count for the longest request follows FlashAttention-2's `num_splits_heuristic`: the smallest count whose
wave efficiency (programs / (waves x slots)) is within 85% of the best reachable, where slots =
`num_sms` x `RESIDENT_PER_SM`. Shorter requests get proportionally fewer splits so splits carry similar
work, and no split is shorter than `MIN_BLOCKS_PER_SPLIT` blocks (each costs a partial-output write and a
stage-2 read, about 1% of its KV bytes at D=128 and 2 x 64 tokens).
`num_sms` is the SM count the executor actually runs on (the colocation manager's share of the GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Stage-1 programs resident per SM at once. From the sm_90 AOT report (`python -m adrenaline_kernels.aot`):
# fp16, D=128, BLOCK_N=64, 4 warps needs ~39 KiB of shared memory and ~93 registers/thread, so 5 fit on an
# H100 SM; 4 leaves room for the colocated prefill. NOTE: not tuned on a GPU yet (none was lent); sweep
# `bench --num-sms` (slots scale with it) to tune it.
RESIDENT_PER_SM = 4
WAVE_EFFICIENCY_SLACK = 0.85  # FlashAttention-2's: accept 85% of the best efficiency for fewer splits
MANY_WAVES = 8  # with this many waves of programs already, the tail is negligible: do not split
MIN_BLOCKS_PER_SPLIT = 2  # a split reads at least this many BLOCK_N token blocks
MAX_SPLITS = 64  # bounds the stage-1 workspace [B, Hq, MAX_SPLITS, D] float32
CPU_NUM_SMS = 4  # stand-in "SM" count under the Triton interpreter (fewer programs run faster there)
MAX_HEAD_DIM = 256
MAX_BLOCK_H = 64


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def default_num_sms(device: torch.device) -> int:
    """SMs of the whole GPU on CUDA; `CPU_NUM_SMS` elsewhere (the interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return CPU_NUM_SMS


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch knobs of the stage-1 kernel."""

    block_n: int = 64  # KV tokens per inner-loop step
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        if self.block_n not in (16, 32, 64, 128):
            raise ValueError(f"KernelConfig.block_n must be one of 16, 32, 64, 128, got {self.block_n}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"KernelConfig.num_warps must be one of 1, 2, 4, 8, 16, got {self.num_warps}")
        if not 1 <= self.num_stages <= 6:
            raise ValueError(f"KernelConfig.num_stages must be in [1, 6], got {self.num_stages}")


def default_config(head_dim: int) -> KernelConfig:
    """BLOCK_N 64 up to head_dim 128 (K and V tiles of 16 KiB each in fp16), 32 above."""
    return KernelConfig(block_n=64 if head_dim <= 128 else 32)


def block_h_for(group: int) -> int:
    """Query heads per stage-1 program: a power of two >= 16 (tl.dot's minimum M), at most MAX_BLOCK_H."""
    return min(max(16, next_power_of_2(group)), MAX_BLOCK_H)


def wave_efficiency(programs: int, slots: int) -> float:
    """Fraction of the slot-waves doing work: programs / (ceil(programs / slots) * slots)."""
    return programs / (cdiv(programs, slots) * slots)


def splits_for_waves(base_programs: int, slots: int, max_splits: int) -> int:
    """FlashAttention-2's rule over split counts 1..max_splits for `base_programs` programs per split."""
    if base_programs >= MANY_WAVES * slots or max_splits <= 1:
        return 1
    effs = [wave_efficiency(base_programs * s, slots) for s in range(1, max_splits + 1)]
    best = max(effs)
    return next(s for s, e in enumerate(effs, start=1) if e >= WAVE_EFFICIENCY_SLACK * best)


def plan_num_splits(seq_lens: list[int], num_kv_heads: int, head_tiles: int, num_sms: int, block_n: int) -> list[int]:
    """Splits per request (each >= 1). seq_lens in tokens; an empty request gets 1 (an empty split)."""
    if not seq_lens:
        return []
    max_len = max(seq_lens)

    def by_size(n: int) -> int:  # at least MIN_BLOCKS_PER_SPLIT blocks per split, at most MAX_SPLITS
        return max(1, min(cdiv(n, block_n) // MIN_BLOCKS_PER_SPLIT, MAX_SPLITS))

    base_programs = len(seq_lens) * num_kv_heads * head_tiles
    want = splits_for_waves(base_programs, num_sms * RESIDENT_PER_SM, by_size(max_len))  # longest request
    return [1 if n == 0 else max(1, min(cdiv(want * n, max_len), by_size(n))) for n in seq_lens]

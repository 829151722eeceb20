"""How many KV splits each request gets, and the tile sizes of the decode kernel.

Decode attention is memory-bound: the kernel reaches HBM bandwidth only when enough programs run at once
to keep every SM busy. Programs per split are B x Hkv x head_tiles; splitting the KV of each request
multiplies that. The split count aims at `WAVES` programs per SM (flash-decoding's rule), gives longer
requests proportionally more splits so that splits carry similar work, and never makes a split shorter
than `MIN_BLOCKS_PER_SPLIT` blocks (each split costs a partial-output write and a stage-2 read).
`num_sms` is the SM count the executor actually runs on (the colocation manager's share of the GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Target programs per SM. A stage-1 program with BLOCK_N=64, D=128, fp16 and 2 stages holds ~64 KiB of
# shared memory, so about 3 fit on an H100 SM at once; 4 per SM keeps every SM full with some tail slack.
# NOTE: not tuned on a GPU yet (no GPU was lent); sweep `bench --num-sms` to tune it.
WAVES = 4
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


def plan_num_splits(seq_lens: list[int], num_kv_heads: int, head_tiles: int, num_sms: int, block_n: int) -> list[int]:
    """Splits per request (each >= 1). seq_lens in tokens; an empty request gets 1 (an empty split)."""
    if not seq_lens:
        return []
    base_programs = len(seq_lens) * num_kv_heads * head_tiles
    want = max(1, cdiv(WAVES * num_sms, base_programs))  # splits for the longest request
    max_len = max(seq_lens)
    out = []
    for n in seq_lens:
        if n == 0:
            out.append(1)
            continue
        by_share = cdiv(want * n, max_len)  # proportional to length
        by_size = max(1, cdiv(n, block_n) // MIN_BLOCKS_PER_SPLIT)
        out.append(max(1, min(by_share, by_size, MAX_SPLITS)))
    return out

"""Random decode-attention batches laid out like SGLang's token-slot pool (tests and the benchmark).

Each request's KV lives in token slots scattered across the pool (a random permutation, as a pool looks
after many allocations and frees); kv_indptr/kv_indices are what SGLang's Triton backend builds from
`req_to_token`. With `page_size` P > 1 the pool is allocated in pages of P slots, as SGLang's paged
allocator does (`--page-size 16`): whole pages are scattered, the slots inside a page are consecutive, and
a request's last page may be partly used. The kernels still index single tokens; only the access pattern
changes (runs of P consecutive rows instead of single rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class DecodeBatch:
    q: torch.Tensor  # [B, Hq, D]
    k_buffer: torch.Tensor  # [num_slots, Hkv, D]
    v_buffer: torch.Tensor  # [num_slots, Hkv, D]
    kv_indptr: torch.Tensor  # [B + 1] int32
    kv_indices: torch.Tensor  # [sum(seq_lens)] int32

    @property
    def seq_lens(self) -> list[int]:
        p = self.kv_indptr.tolist()
        return [b - a for a, b in zip(p[:-1], p[1:])]

    def kv_bytes(self) -> int:
        """Bytes of K and V the attention reads (each request's tokens, all KV heads)."""
        row = self.k_buffer.shape[1] * self.k_buffer.shape[2] * self.k_buffer.element_size()
        return 2 * int(self.kv_indices.numel()) * row


def make_decode_batch(
    seq_lens: list[int],
    num_qo_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
    *,
    device: str | torch.device = "cpu",
    num_slots: int | None = None,
    scatter: bool = True,
    seed: int = 0,
    page_size: int = 1,
) -> DecodeBatch:
    """q, k, v ~ N(0, 1). `num_slots` defaults to the slots the requests occupy (whole pages) plus 25%
    spare (at least 8), so some pool rows are never read. `scatter=False` gives contiguous slots in order
    (a fresh pool). `page_size`: slots per allocation unit (module doc)."""
    if page_size < 1:
        raise ValueError(f"make_decode_batch: page_size must be >= 1, got {page_size}")
    if any(n < 0 for n in seq_lens):
        raise ValueError(f"make_decode_batch: seq_lens must be >= 0, got {seq_lens}")
    total = sum(seq_lens)
    pages_per_req = [-(-n // page_size) for n in seq_lens]  # ceil
    used = sum(pages_per_req) * page_size
    num_slots = max(used + used // 4, 8) if num_slots is None else num_slots
    if num_slots < used:
        raise ValueError(f"make_decode_batch: num_slots must be >= {used} (the requests' pages), got {num_slots}")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    if page_size == 1:
        order = torch.randperm(num_slots, generator=gen) if scatter else torch.arange(num_slots)
    else:
        num_pages = num_slots // page_size
        pages = torch.randperm(num_pages, generator=gen) if scatter else torch.arange(num_pages)
        pages = pages[: sum(pages_per_req)]
        in_page = torch.arange(page_size)
        per_req, start = [], 0
        for n, p in zip(seq_lens, pages_per_req):  # request i's slots: its pages in order, first n slots
            slots = (pages[start : start + p, None] * page_size + in_page).reshape(-1)  # [p * P]
            per_req.append(slots[:n])
            start += p
        order = torch.cat(per_req) if per_req else torch.empty(0, dtype=torch.int64)
    dev_gen = torch.Generator(device=device).manual_seed(seed)  # big pools are drawn on the device itself

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=dev_gen, device=device, dtype=dtype)

    lens = torch.tensor([0, *seq_lens], dtype=torch.int64)
    return DecodeBatch(
        q=randn(len(seq_lens), num_qo_heads, head_dim),
        k_buffer=randn(num_slots, num_kv_heads, head_dim),
        v_buffer=randn(num_slots, num_kv_heads, head_dim),
        kv_indptr=torch.cumsum(lens, 0).to(dtype=torch.int32, device=device),
        kv_indices=order[:total].to(dtype=torch.int32, device=device),
    )

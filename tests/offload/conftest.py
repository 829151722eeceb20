"""Shared helpers for the offload runtime tests: tiny pools and executors, reference answers."""

from __future__ import annotations

import pytest
import torch

from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool

LAYERS, HQ, HKV, D = 2, 4, 2, 8  # GQA group 2; tiny so every test runs in milliseconds


@pytest.fixture
def make_executor():
    def make(num_slots: int = 64, attention: str = "reference") -> AttentionExecutor:
        return AttentionExecutor(KVPool.standalone(LAYERS, num_slots, HKV, D), attention)

    return make


def random_kv(num_tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A prompt's KV `[LAYERS, T, HKV, D]`."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(LAYERS, num_tokens, HKV, D, generator=gen),
            torch.randn(LAYERS, num_tokens, HKV, D, generator=gen))


def random_rows(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q `[n, HQ, D]`, k, v `[n, HKV, D]` of one decode step."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, HQ, D, generator=gen), torch.randn(n, HKV, D, generator=gen),
            torch.randn(n, HKV, D, generator=gen))

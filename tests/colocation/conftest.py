"""Synthetic profiles for the planner tests (no GPU, no committed data)."""

from __future__ import annotations

import math

import pytest

from adrenaline_sgl.colocation.profiles import AttentionPoint, PrefillPoint, Profile

SHARES = [i / 16 for i in range(1, 17)]


def synthetic_profile(alpha: float = 0.8, full_ms: float = 100.0, contention: float | None = None,
                      source: str = "synthetic", total_sms: int = 132, tokens=(512, 2048)) -> Profile:
    """prefill_ms = full_ms * (tokens / 2048) / share**alpha (sub-linear for alpha < 1); attention
    bandwidth saturating at 3000 GB/s; `contention` multiplies the contended prefill time."""
    prefill = tuple(
        PrefillPoint(s, round(s * total_sms), total_sms, t, 4, full_ms * (t / 2048) / s**alpha,
                     full_ms * (t / 2048) / s**alpha * contention if contention else math.nan)
        for t in tokens
        for s in SHARES
    )  # fmt: skip
    attention = tuple(
        AttentionPoint(s, round(s * total_sms), total_sms, 32, 4096, 1.0, 3000 * (1 - math.exp(-s / 0.15)), 3300)
        for s in SHARES
    )
    return Profile(f"synthetic-{alpha}", {"source": source, "compute_capability": "9.0"}, prefill, attention)


@pytest.fixture
def profile() -> Profile:
    return synthetic_profile()

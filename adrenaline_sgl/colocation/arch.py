"""SM counts a partition may have, per GPU architecture, and the rounding of an SM share to them.

Green contexts (`cuDevSmResourceSplitByCount`) only split SMs in architecture-specific groups; the same
limits are used for MPS so that a plan means the same thing under both partitioners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class ShareError(ValueError):
    """A bad SM share or SM count (one-line message naming the field and the valid range)."""


@dataclass(frozen=True)
class SMGranularity:
    min_sms: int  # the smallest partition the architecture allows
    multiple: int  # partition sizes are multiples of this


def sm_granularity(compute_capability: tuple[int, int]) -> SMGranularity:
    """CUDA driver limits for `cuDevSmResourceSplitByCount` (CUDA 12.4+ driver API docs; SGLang's
    `pdmux_context.get_arch_constraints` uses the same table)."""
    major = compute_capability[0]
    if major <= 5:
        raise ShareError(f"compute_capability={compute_capability} has no SM partitioning (needs 6.0 or newer)")
    if major == 6:
        return SMGranularity(1, 1)
    if major == 7:
        return SMGranularity(2, 2)
    if major == 8:
        return SMGranularity(4, 2)
    return SMGranularity(8, 8)  # Hopper (9.x) and newer


@dataclass(frozen=True)
class DeviceInfo:
    """What the planner and the partitioners need to know about a GPU."""

    name: str
    total_sms: int
    compute_capability: tuple[int, int]

    def __post_init__(self):
        if self.total_sms < 1:
            raise ShareError(f"total_sms must be >= 1, got {self.total_sms}")

    @property
    def granularity(self) -> SMGranularity:
        return sm_granularity(self.compute_capability)

    def partition_sizes(self) -> list[int]:
        """Every executor partition size that leaves the other side at least one granule (ascending)."""
        g = self.granularity
        first = max(g.min_sms, g.multiple * math.ceil(g.min_sms / g.multiple))
        return [n for n in range(first, self.total_sms - g.min_sms + 1, g.multiple)]


def check_share(sm_share: float, field: str = "sm_share") -> float:
    """An SM share is a fraction of the device's SMs, strictly between 0 and 1."""
    if isinstance(sm_share, bool) or not isinstance(sm_share, int | float) or not math.isfinite(sm_share):
        raise ShareError(f"{field} must be a number in (0, 1), got {sm_share!r}")
    if not 0.0 < sm_share < 1.0:
        raise ShareError(f"{field} must be in (0, 1) (a fraction of the device's SMs), got {sm_share}")
    return float(sm_share)


def share_to_sms(sm_share: float, device: DeviceInfo, field: str = "sm_share") -> int:
    """Round a share to the nearest allowed partition size; both sides keep at least one granule.

    Raises ShareError when the share rounds to zero SMs (below half a granule).
    """
    check_share(sm_share, field)
    g = device.granularity
    sizes = device.partition_sizes()
    if not sizes:
        raise ShareError(
            f"{device.name} has {device.total_sms} SMs: too few to split in parts of at least {g.min_sms} SMs"
        )
    wanted = sm_share * device.total_sms
    if wanted < g.min_sms / 2:  # nearer to 0 SMs than to the smallest partition
        raise ShareError(
            f"{field}={sm_share} rounds to 0 SMs on {device.name} ({device.total_sms} SMs, partitions of at least "
            f"{g.min_sms} in multiples of {g.multiple}): use {field} >= {g.min_sms / 2 / device.total_sms:.4f}"
        )
    return min(sizes, key=lambda n: (abs(n - wanted), n))

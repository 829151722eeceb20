"""Prefill colocation: SM partitions of the prefill GPU for the attention executor, and the SM-share
planner. See docs/design.md. Importing this package imports neither torch nor any CUDA module."""

from adrenaline_sgl.colocation.arch import DeviceInfo, ShareError, share_to_sms, sm_granularity
from adrenaline_sgl.colocation.config import ColocationConfig
from adrenaline_sgl.colocation.manager import ColocationManager, make_manager
from adrenaline_sgl.colocation.partitioner import (
    PARTITIONERS,
    Partition,
    PartitionerUnavailable,
    RepartitionNeedsRestart,
    SMPartitioner,
    executor_partitioner,
    make_partitioner,
)
from adrenaline_sgl.colocation.planner import Plan, PlannerConfig, PrefillLoad, SMSharePlanner, plan
from adrenaline_sgl.colocation.profiles import Profile, default_profile, load_profile

__all__ = [
    "PARTITIONERS",
    "ColocationConfig",
    "ColocationManager",
    "DeviceInfo",
    "Partition",
    "PartitionerUnavailable",
    "Plan",
    "PlannerConfig",
    "PrefillLoad",
    "Profile",
    "RepartitionNeedsRestart",
    "SMPartitioner",
    "SMSharePlanner",
    "ShareError",
    "default_profile",
    "executor_partitioner",
    "load_profile",
    "make_manager",
    "make_partitioner",
    "plan",
    "share_to_sms",
    "sm_granularity",
]

"""Ties the planner to a partitioner: re-plan on load reports, apply where the backend allows it.

Green contexts (and the fake) move the executor to the new partition at once. MPS cannot change the
split inside a running process: the new plan is kept as `pending` and `restart_required` is set; the
launcher restarts the executor with `MPSDaemon.client_env(pending.executor_share)` when the executor
holds no offloaded request (it stops admitting offloads, drains, restarts, and clears `pending`).
"""

from __future__ import annotations

from adrenaline_sgl.colocation.arch import DeviceInfo
from adrenaline_sgl.colocation.config import ColocationConfig
from adrenaline_sgl.colocation.partitioner import SMPartitioner, executor_partitioner
from adrenaline_sgl.colocation.planner import Plan, PlannerConfig, PrefillLoad, SMSharePlanner
from adrenaline_sgl.colocation.profiles import default_profile, load_profile


class ColocationManager:
    def __init__(self, partitioner: SMPartitioner, planner: SMSharePlanner | None = None):
        self.partitioner = partitioner
        self.planner = planner
        self.pending: Plan | None = None  # a plan the partitioner could not apply live (MPS)

    @property
    def restart_required(self) -> bool:
        return self.pending is not None

    def on_load(self, load: PrefillLoad) -> Plan | None:
        """Re-plan for a new load; returns the plan when it changed (applied, or pending for MPS)."""
        if self.planner is None:
            return None
        new = self.planner.update(load)
        if new is None:
            return None
        if self.partitioner.supports_live_repartition:
            self.partitioner.repartition(new.executor_share)
            self.pending = None
        else:
            self.pending = new
        return new

    def mark_restarted(self) -> None:
        """The launcher restarted the executor with the pending plan."""
        self.pending = None

    def close(self) -> None:
        self.partitioner.close()


def make_manager(cfg: ColocationConfig, device_info: DeviceInfo | None = None, **partitioner_kw) -> ColocationManager:
    """Partitioner at cfg.executor_sm_share; a planner too when cfg.ttft_slo_ms is set.

    `device_info` overrides what the partitioner reports (the fake partitioner, tests)."""
    part = executor_partitioner(cfg.executor_sm_share, cfg.device, cfg.partitioner, **partitioner_kw)
    planner = None
    if cfg.ttft_slo_ms is not None:
        info = device_info or getattr(part, "info", None)
        if info is None:
            raise ValueError(f"the {cfg.partitioner} partitioner does not know the device: pass device_info")
        profile = load_profile(cfg.profile) if cfg.profile else default_profile(gpu_name=info.name)
        planner = SMSharePlanner(profile, PlannerConfig(ttft_slo_ms=cfg.ttft_slo_ms), info)
    return ColocationManager(part, planner)

"""The `--adrenaline-*` colocation flags and the prefill scheduler, to the executor's `PrefillColocation`
(`adrenaline_sgl.colocation.replan`: the partition and its run-time re-planning, SGLang-free)."""

from __future__ import annotations

import logging

from adrenaline_sgl.colocation.config import ColocationConfig
from adrenaline_sgl.colocation.partitioner import SMPartitioner
from adrenaline_sgl.colocation.planner import PlannerConfig, SMSharePlanner
from adrenaline_sgl.colocation.profiles import default_profile, load_profile
from adrenaline_sgl.colocation.replan import (
    DEFAULT_ARRIVAL_WINDOW_S,
    DEFAULT_REPLAN_INTERVAL_S,
    PrefillColocation,
    planning_device,
)

logger = logging.getLogger(__name__)

COLOCATION_ATTR = "_adrenaline_colocation"  # on the prefill scheduler, only while re-planning (the hooks feed it)


def batch_tokens_of(scheduler, default: int = 2048) -> int:
    """Prompt tokens in one prefill batch: the scheduler's effective chunked prefill size (None: off) and max
    prefill tokens, the smaller positive one; `default` where neither is set (stand-in schedulers)."""
    sizes = [int(v) for v in (getattr(scheduler, "chunked_prefill_size", None),
                              getattr(scheduler, "max_prefill_tokens", None)) if v is not None and int(v) > 0]
    return min(sizes) if sizes else default


def executor_partition(args, device) -> SMPartitioner:
    """The executor's partitioner, opened at `--adrenaline-executor-sm-share` (1.0: the whole GPU, unpartitioned)
    with `--adrenaline-executor-partitioner`."""
    from adrenaline_sgl import colocation

    share, device = args.executor_sm_share, str(device)
    name = getattr(args, "executor_partitioner", ColocationConfig.partitioner)
    # NOTE: called positionally as before for the default, so fakes of the old signature still fit
    part = colocation.executor_partitioner(share, device) if name == ColocationConfig.partitioner else \
        colocation.executor_partitioner(share, device, name=name)  # fmt: skip
    logger.info("adrenaline: executor partition %s on %s: share %.2f, %s SMs", part.name, device, share,
                part.num_sms if part.num_sms is not None else "all")
    return part


def make_colocation(args, device: str, scheduler=None, num_layers: int | None = None) -> PrefillColocation:
    """From the `--adrenaline-*` flags: the executor's partitioner at `executor_sm_share`, and a planner when
    `ttft_slo_ms` is set. `args` may be a stand-in lacking the colocation fields (defaults then)."""
    part = executor_partition(args, device)
    slo = getattr(args, "ttft_slo_ms", None)
    if slo is None:
        return PrefillColocation(part)
    try:
        folder = getattr(args, "colocation_profile", "")
        profile = load_profile(folder) if folder else default_profile(gpu_name=getattr(getattr(part, "info", None),
                                                                                        "name", None))
        info, source = planning_device(part, profile)
        planner = SMSharePlanner(profile, PlannerConfig(ttft_slo_ms=slo, model_layers=num_layers), info)
    except BaseException:
        part.close()
        raise
    coloc = PrefillColocation(part, planner, batch_tokens_of(scheduler),
                              getattr(args, "replan_interval_s", DEFAULT_REPLAN_INTERVAL_S),
                              getattr(args, "arrival_window_s", DEFAULT_ARRIVAL_WINDOW_S))
    logger.info("adrenaline colocation: re-planning every %g s for a mean TTFT of %g ms: profile %s (%s), "
                "planning %s (%s, %d SMs), batch %d tokens, %s partitioner", coloc.interval_s, slo, profile.name,
                profile.source, source, info.name, info.total_sms, coloc.batch_tokens, part.name)  # fmt: skip
    return coloc

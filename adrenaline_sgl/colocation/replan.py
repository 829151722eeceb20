"""Run-time SM re-planning for the executor hosted on a prefill instance (paper technique 2). SGLang-free: the
hooks that drive it are `adrenaline_sgl.sglang_ext.prefill_colocation`.

Two threads, one hand-over:
- The prefill scheduler thread counts the prompt tokens of every request it admits (`on_admit`, from the
  `_add_request_to_queue` hook) into a sliding window, and once per `--adrenaline-replan-interval-s`
  (`tick`, from the inflight-queue hook that runs every loop pass; O(1) between re-plans) hands
  `PrefillLoad(arrival tokens/s, batch tokens)` to `ColocationManager.on_load`.
- The executor's server thread moves to a new partition only at a step boundary: the manager's partitioner
  is a `StepBoundaryPartitioner`, whose `repartition` only records the share; the executor's
  `begin_step` calls `at_step_boundary()`, which re-partitions through the real partitioner there (green
  contexts: the old stream is drained first) and returns the new partition (stream, SM count) to use.
  A step in flight keeps its stream and kernel plan.
MPS cannot re-partition a running process: the manager keeps the plan as pending (`restart_required`);
it is logged and reported, nothing is restarted.
NOTE: the planner's TTFT model and the default profile are stated, not measured here (see planner.py).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable

from adrenaline_sgl.colocation.arch import DeviceInfo, check_share
from adrenaline_sgl.colocation.manager import ColocationManager
from adrenaline_sgl.colocation.partitioner import Partition, SMPartitioner, cuda_device_info
from adrenaline_sgl.colocation.planner import Plan, PrefillLoad, SMSharePlanner
from adrenaline_sgl.colocation.profiles import Profile

DEFAULT_REPLAN_INTERVAL_S = 1.0  # seconds between re-plans of the executor's SM share
DEFAULT_ARRIVAL_WINDOW_S = 10.0  # seconds of prompt-token arrivals averaged into the planner's load

logger = logging.getLogger(__name__)

_clock = time.monotonic  # seconds; PrefillColocation's default clock (tests replace it)


class ArrivalWindow:
    """Prompt tokens admitted per second over the last `window_s` seconds (scheduler thread only).

    rate(now) = tokens admitted in (now - window_s, now] / span, span = min(window_s, now - start) but at
    least `min_span_s` (so the first admissions after start-up do not read as a burst). Amortized O(1).
    """

    def __init__(self, window_s: float, start_s: float, min_span_s: float = 1.0):
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"arrival window_s={window_s}: expected > 0")
        if not 0 < min_span_s <= window_s:
            raise ValueError(f"arrival min_span_s={min_span_s}: expected 0 < min_span_s <= window_s={window_s}")
        self.window_s, self.start_s, self.min_span_s = window_s, start_s, min_span_s
        self._events: collections.deque[tuple[float, int]] = collections.deque()  # (admitted at s, tokens)
        self._tokens = 0  # sum of tokens in _events

    def add(self, tokens: int, now_s: float) -> None:
        if tokens < 0:
            raise ValueError(f"arrival tokens={tokens}: expected >= 0")
        self._events.append((now_s, tokens))
        self._tokens += tokens
        self._evict(now_s)

    def tokens_per_s(self, now_s: float) -> float:
        self._evict(now_s)
        span = max(self.min_span_s, min(self.window_s, now_s - self.start_s))
        return self._tokens / span

    def _evict(self, now_s: float) -> None:
        while self._events and self._events[0][0] <= now_s - self.window_s:
            self._tokens -= self._events.popleft()[1]


class StepBoundaryPartitioner:
    """What `ColocationManager` drives (duck-typed `SMPartitioner`): `repartition` from the scheduler thread
    only records the share; `apply_pending` on the executor's thread applies it through the real partitioner.
    NOTE: the real partitioner is touched by the executor's thread only, so its streams are never freed under
    a running step."""

    def __init__(self, inner: SMPartitioner):
        self.inner = inner
        self.name = inner.name
        self.supports_live_repartition = inner.supports_live_repartition
        self._requested: float | None = None
        self._lock = threading.Lock()

    @property
    def partition(self) -> Partition:
        return self.inner.partition

    @property
    def requested(self) -> float | None:
        return self._requested

    def repartition(self, sm_share: float) -> Partition:
        check_share(sm_share, "executor sm_share")
        if self.inner.name == "none":
            return self.inner.partition  # it enforces no split: the plan is recorded only, nothing to move to
        with self._lock:
            self._requested = sm_share
        return self.inner.partition  # still the current one: the executor moves at its next step

    def apply_pending(self) -> Partition | None:
        with self._lock:
            share, self._requested = self._requested, None
        return None if share is None else self.inner.repartition(share)

    def close(self) -> None:
        self.inner.close()


def planning_device(part: SMPartitioner, profile: Profile) -> tuple[DeviceInfo, str]:
    """(the device the planner splits, where that came from): the partitioner's GPU where it knows one,
    else the GPU the profile was made on (the `none` partitioner on CPU, MPS without the uncapped count)."""
    info = getattr(part, "info", None)
    if isinstance(info, DeviceInfo):
        return info, "the partitioner's device"
    total = part.partition.total_sms
    device = str(getattr(part, "device", ""))
    if total and device.startswith("cuda"):
        cuda = cuda_device_info(device)
        return DeviceInfo(cuda.name, total, cuda.compute_capability), "this GPU"
    prov = profile.provenance
    try:
        major, minor = (int(x) for x in prov["compute_capability"].split("."))
        return DeviceInfo(prov.get("gpu", profile.name), int(prov["total_sms"]), (major, minor)), "the profile's GPU"
    except (KeyError, ValueError) as err:
        raise ValueError(f"adrenaline colocation_profile={profile.name!r}: no usable total_sms / compute_capability "
                         f"provenance to plan a device the {part.name} partitioner does not describe ({err})") from err


class PrefillColocation:
    """The executor's partition on a prefill instance, and (with a TTFT SLO) its re-planning."""

    def __init__(self, partitioner: SMPartitioner, planner: SMSharePlanner | None = None,
                 batch_tokens: int = 2048, interval_s: float = DEFAULT_REPLAN_INTERVAL_S,
                 window_s: float = DEFAULT_ARRIVAL_WINDOW_S,
                 clock: Callable[[], float] | None = None):
        self.clock = clock or _clock
        self.boundary = StepBoundaryPartitioner(partitioner)
        self.manager = ColocationManager(self.boundary, planner)
        self.batch_tokens = batch_tokens
        self.interval_s = interval_s
        now = self.clock()
        self.window = ArrivalWindow(window_s, now, min_span_s=min(window_s, max(interval_s, 1.0)))
        self._next_plan_s = now  # the first tick plans at once
        self.last_plan: Plan | None = None
        self.last_load: PrefillLoad | None = None
        self.plans = 0  # plans the manager produced (applied, or pending for MPS)

    @property
    def replanning(self) -> bool:
        return self.manager.planner is not None

    @property
    def partitioner(self) -> SMPartitioner:
        return self.boundary.inner

    # ---- scheduler thread ----

    def on_admit(self, prompt_tokens: int) -> None:
        if self.replanning:
            self.window.add(prompt_tokens, self.clock())

    def tick(self) -> Plan | None:
        """Re-plan when the interval is up (else O(1)); returns a plan that changed."""
        now = self.clock()
        if not self.replanning or now < self._next_plan_s:
            return None
        self._next_plan_s = now + self.interval_s
        self.last_load = PrefillLoad(self.window.tokens_per_s(now), self.batch_tokens)
        plan = self.manager.on_load(self.last_load)
        if plan is not None:
            self.last_plan = plan
            self.plans += 1
            self._log(plan)
        return plan

    def _log(self, plan: Plan) -> None:
        load = self.last_load
        if self.manager.restart_required:
            what = (f"pending: the {self.partitioner.name} partitioner cannot re-partition a running process; "
                    f"restart this instance with --adrenaline-executor-sm-share {plan.executor_share:.3f} to apply")
        elif self.partitioner.name == "none":
            what = "recorded only: the none partitioner enforces no split"
        else:
            what = "applied at the executor's next step"
        slo = self.manager.planner.cfg.ttft_slo_ms
        logger.info("adrenaline colocation: load %.0f prompt tok/s, batch %d tok -> executor %d/%d SMs (share %.3f), "
                    "prefill %d SMs, predicted TTFT %.1f ms (SLO %.1f ms %s); %s", load.arrival_tokens_per_s,
                    load.batch_tokens, plan.executor_sms, plan.total_sms, plan.executor_share, plan.prefill_sms,
                    plan.predicted_ttft_ms, slo, "met" if plan.slo_met else "NOT met", what)  # fmt: skip

    # ---- executor thread ----

    def at_step_boundary(self) -> Partition | None:
        """The new partition to move to before this step, or None to stay."""
        return self.boundary.apply_pending()

    # ---- any thread ----

    def stats(self) -> dict:
        """JSON-able: the partition the executor uses now and the last plan (predicted TTFT may be inf)."""
        part = self.partitioner.partition
        plan = self.last_plan
        return {
            "partitioner": self.partitioner.name,
            "executor_sm_share": part.executor_share,  # None: not known (no partition on this device)
            "executor_sms": part.executor_sms,
            "total_sms": part.total_sms,
            "replanning": self.replanning,
            "arrival_tokens_per_s": self.last_load.arrival_tokens_per_s if self.last_load else 0.0,
            "plan": None if plan is None else {
                "executor_sms": plan.executor_sms, "prefill_sms": plan.prefill_sms, "total_sms": plan.total_sms,
                "executor_share": plan.executor_share, "predicted_ttft_ms": plan.predicted_ttft_ms,
                "slo_met": plan.slo_met, "executor_gbs": plan.executor_gbs},
            "plan_waiting_for_step": self.boundary.requested is not None,
            "restart_required": self.manager.restart_required,
        }

    def close(self) -> None:
        self.manager.close()

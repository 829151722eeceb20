"""Decode's offload statistics, carried from the scheduler process to the HTTP process on SGLang's own channel.

The per-layer round trips are measured by the `OffloadClient`s of the decode *scheduler* process
(`DecodeOffload`), while `GET /adrenaline/load` runs in the launcher's HTTP process. Why this path: SGLang
0.5.23 already carries one untyped request/response between them, `GetInternalStateReq` ->
`Scheduler.get_internal_state` -> `GetInternalStateReqOutput.internal_state` (a msgpack-native dict per DP
rank, what `GET /server_info` shows), and the tokenizer manager's communicator fans it out to every DP rank.
One more key in that dict needs no socket, message type or process of ours. Not chosen: SGLang's load
snapshot (`LoadSnapshot` in shared memory, what `get_loads` reads: a fixed msgspec struct, no room for our
fields without patching it), `RpcReqInput` (answers success and a message only), a side channel of our own
(a socket or file to open, secure and clean up).

Hook (registered in every process, acts in the scheduler): AROUND `Scheduler.get_internal_state`.
Changes: on a `--adrenaline-role decode` instance the returned `internal_state` gets an `adrenaline` key
(`scheduler_stats`); nothing else (so `/server_info` shows it too). Why: the proxy's metrics need decode's
real round trip and its count of running offloaded requests.

HTTP side: `fetch` asks with a timeout and `combine`s the DP ranks. A scheduler that does not answer in time
(in a long forward, or stopped) gives None: the load report then says `offload_stats_ok=False`, fields 0.
NOTE: SGLang's communicator serializes these requests; one that timed out is answered later, and that late
answer may serve the next caller (a slightly older snapshot, never a wrong type).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

from adrenaline_sgl.offload import decode_state
from adrenaline_sgl.sglang_ext import flags

logger = logging.getLogger(__name__)

GET_INTERNAL_STATE = "sglang.srt.managers.scheduler.Scheduler.get_internal_state"
STATE_KEY = "adrenaline"
WINDOW_S = 60.0  # round trips that ended in the last minute (each client keeps at most its last 16384)
FETCH_TIMEOUT_S = 1.0  # below the proxy's 2 s load-pull timeout


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated `q`-th percentile (0..100) of an ascending list, as numpy's default; 0 when empty."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class DecodeStats:
    """One decode instance's offload statistics (all DP ranks)."""

    rtt_samples: int = 0  # per-layer round trips in the window
    rtt_mean_ms: float = 0.0  # mean per-layer round trip, submit to reply (0 = none in the window)
    rtt_p50_ms: float = 0.0  # with several DP ranks: the largest rank's (exact with one)
    rtt_p99_ms: float = 0.0  # with several DP ranks: the largest rank's (exact with one)
    offloaded_reqs: int = 0  # admitted offloaded requests not yet finished (failed ones excluded)
    failed_reqs: int = 0  # offloaded requests whose executor failed, being aborted
    failed_total: int = 0  # offloaded requests failed by their executor since the scheduler started (a counter)
    executors: int = 0  # executors with a connected client
    window_s: float = WINDOW_S

    def __post_init__(self):
        for name in ("rtt_samples", "rtt_mean_ms", "rtt_p50_ms", "rtt_p99_ms", "offloaded_reqs", "failed_reqs",
                     "failed_total", "executors"):  # fmt: skip
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"decode stats {name}={value!r}: expected a finite number >= 0")
        if not self.window_s > 0:
            raise ValueError(f"decode stats window_s={self.window_s!r}: expected > 0 seconds")

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


# ---- scheduler process ----


def scheduler_stats(offload: decode_state.DecodeOffload | None, window_s: float = WINDOW_S) -> DecodeStats:
    """This scheduler's statistics; all zeros when the attention backend is not `adrenaline` (no offload)."""
    if offload is None:
        return DecodeStats(window_s=window_s)
    samples_ms = sorted(offload.recent_round_trips_ms(window_s))
    counts = offload.counts()
    return DecodeStats(
        rtt_samples=len(samples_ms),
        rtt_mean_ms=sum(samples_ms) / len(samples_ms) if samples_ms else 0.0,
        rtt_p50_ms=percentile(samples_ms, 50),
        rtt_p99_ms=percentile(samples_ms, 99),
        offloaded_reqs=counts["offloaded"],
        failed_reqs=counts["failed"],
        failed_total=counts["failures_total"],
        executors=counts["executors"],
        window_s=window_s,
    )


def get_internal_state_hook(original, self, recv_req):
    """AROUND `Scheduler.get_internal_state`: adds `internal_state["adrenaline"]` (`DecodeStats.to_dict`) on a
    decode instance. Statistics that fail to build are logged and left out: `/server_info` must keep working."""
    output = original(self, recv_req)
    if flags.of(self.server_args).role == "decode":
        try:
            output.internal_state[STATE_KEY] = scheduler_stats(decode_state.current()).to_dict()
        except Exception as err:  # the endpoint then reports the stats as unknown
            logger.warning("adrenaline: decode offload statistics failed: %s", err)
    return output


def hooks(hook_type) -> list[tuple[str, object, object]]:
    return [(GET_INTERNAL_STATE, get_internal_state_hook, hook_type.AROUND)]


# ---- HTTP process ----


def combine(states: list[dict]) -> DecodeStats | None:
    """Merge the DP ranks' `internal_state` dicts; None when any rank lacks or garbles our key."""
    ranks = []
    for state in states:
        found = state.get(STATE_KEY) if isinstance(state, dict) else None
        if not isinstance(found, dict):
            return None
        try:
            ranks.append(DecodeStats(**{k: v for k, v in found.items() if k in DecodeStats.__dataclass_fields__}))
        except (TypeError, ValueError) as err:
            logger.warning("adrenaline: bad decode stats from the scheduler: %s", err)
            return None
    if not ranks:
        return None
    samples = sum(r.rtt_samples for r in ranks)
    return DecodeStats(
        rtt_samples=samples,
        rtt_mean_ms=sum(r.rtt_mean_ms * r.rtt_samples for r in ranks) / samples if samples else 0.0,
        rtt_p50_ms=max(r.rtt_p50_ms for r in ranks),
        rtt_p99_ms=max(r.rtt_p99_ms for r in ranks),
        offloaded_reqs=sum(r.offloaded_reqs for r in ranks),
        failed_reqs=sum(r.failed_reqs for r in ranks),
        failed_total=sum(r.failed_total for r in ranks),
        executors=max(r.executors for r in ranks),
        window_s=ranks[0].window_s,
    )


async def fetch(tokenizer_manager, timeout_s: float = FETCH_TIMEOUT_S) -> DecodeStats | None:
    """The decode scheduler(s)' statistics, or None when they do not answer within `timeout_s`."""
    try:
        states = await asyncio.wait_for(tokenizer_manager.get_internal_state(), timeout_s)
    except TimeoutError:
        logger.warning("adrenaline load: the scheduler did not answer get_internal_state in %.1f s", timeout_s)
        return None
    except Exception as err:  # the load endpoint must answer whatever the control path does
        logger.warning("adrenaline load: get_internal_state failed: %s", err)
        return None
    return combine(list(states))

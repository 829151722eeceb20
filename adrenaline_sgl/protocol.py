"""The proxy <-> server contract, declared once: the request mark's keys, the plugin's HTTP paths and what
`GET /adrenaline/load` returns (`LoadReport`).

The proxy writes the mark into a request's custom params (SGLang carries them to
`req.sampling_params.custom_params` on both instances) and pulls each instance's load report; the plugin
(`sglang_ext/`) reads the mark and serves the report. Standard library only: the proxy imports no SGLang.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

OFFLOAD_KEY = "adrenaline_offload"  # bool: the proxy's decision for the request
EXECUTOR_KEY = "adrenaline_executor"  # "host:port" of the executor on the chosen prefill (when offloaded)
LOAD_PATH = "/adrenaline/load"  # GET on every instance with --adrenaline-role: a LoadReport as JSON
FAULT_STOP_PATH = "/adrenaline/executor/stop"  # POST, prefill with --adrenaline-enable-fault-injection (tests)


@dataclass(frozen=True)
class LoadReport:
    """One instance's load, as the proxy's scheduler sees it."""

    role: str  # "prefill" | "decode" | "none" (stock SGLang with the plugin installed)
    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    token_usage: float = 0.0  # fraction of the KV pool in use, 0..1
    max_total_tokens: int = 0  # KV pool size in tokens (0 = unknown)
    executor_addr: str = ""  # prefill: "host:port" of its attention executor ("" = none)
    executor_healthy: bool = False  # prefill: the executor answers; False makes the proxy decode locally
    executor_kv_tokens: int = 0  # prefill: KV tokens held for offloaded requests
    executor_kv_bytes: int = 0  # prefill: bytes of that KV
    # prefill: the executor's KV slots (tokens) free now and in all (its reserve); 0 capacity = not known. The
    # proxy offloads a request only when its full length (prompt + max_new_tokens, per sequence) fits in what is
    # free less what it has sent there since this report (capacity admission)
    executor_free_tokens: int = 0
    executor_capacity_tokens: int = 0
    executor_sm_share: float = 0.0  # prefill: the executor's SM share now (0 = not known: the proxy uses its own)
    # prefill, SM planner (--adrenaline-ttft-slo-ms): predicted mean TTFT of its last plan (0 = no planner, -1 =
    # prefill cannot keep up at any split) and whether that meets the SLO (True without a planner)
    colocation_ttft_ms: float = 0.0
    colocation_slo_met: bool = True
    offloaded_reqs: int = 0  # prefill: requests whose KV the executor holds; decode: running offloaded
    offload_rtt_ms: float = 0.0  # decode: mean per-layer round trip to the executor, last window (0 = none)
    # decode, from its scheduler (`decode_stats.py`); False: it did not answer in time (or an older plugin), so
    # offloaded_reqs and the offload_rtt_* fields read 0 and mean "unknown"
    offload_stats_ok: bool = False
    offload_rtt_p50_ms: float = 0.0  # decode: median per-layer round trip, same window
    offload_rtt_p99_ms: float = 0.0  # decode: 99th percentile per-layer round trip, same window
    offload_rtt_samples: int = 0  # decode: per-layer round trips in the window
    offload_failed_reqs: int = 0  # decode: offloaded requests whose executor failed (being aborted)
    offload_failures_total: int = 0  # decode: offloaded requests failed by their executor since start (a counter)

    def __post_init__(self):
        if self.role not in ("prefill", "decode", "none"):
            raise ValueError(f"load report role={self.role!r}: expected prefill, decode or none")
        if not 0.0 <= self.token_usage <= 1.0:
            raise ValueError(f"load report token_usage={self.token_usage}: expected 0..1")
        if not 0.0 <= self.executor_sm_share <= 1.0:
            raise ValueError(f"load report executor_sm_share={self.executor_sm_share}: expected 0..1")
        for name in ("num_running_reqs", "num_waiting_reqs", "max_total_tokens", "executor_kv_tokens",
                     "executor_kv_bytes", "executor_free_tokens", "executor_capacity_tokens", "offloaded_reqs",
                     "offload_rtt_ms", "offload_rtt_p50_ms", "offload_rtt_p99_ms", "offload_rtt_samples",
                     "offload_failed_reqs", "offload_failures_total"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"load report {name}={getattr(self, name)}: expected >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LoadReport:
        """Parse a JSON object; unknown keys are ignored (newer plugins may add fields)."""
        if not isinstance(data, dict):
            raise ValueError(f"load report: expected a JSON object, got {type(data).__name__}")
        known = {f.name: f.type for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

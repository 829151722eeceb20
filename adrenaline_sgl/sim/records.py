"""What a simulated run records: raw per-request timestamps and per-instance resource samples.

Nothing here is derived: TTFT, TPOT, throughput and utilization come from `adrenaline_sgl.sim.metrics`.
Times are seconds from the start of the run; work is in FLOPs and bytes of HBM traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Instance kinds in StepSample.kind / MemSample.kind.
PREFILL, DECODE, EXECUTOR = "prefill", "decode", "executor"


@dataclass
class RequestRecord:
    """Timestamps of one request (NaN until the event happens)."""

    rid: int
    arrival_s: float
    prompt_len: int
    output_len: int
    offloaded: bool = False
    prefill_instance: int = -1
    decode_instance: int = -1
    decode_admit_s: float = float("nan")  # decode admitted it (local: allocated its prompt KV); prefill may start
    prefill_start_s: float = float("nan")
    prefill_end_s: float = float("nan")  # the first token exists on the prefill GPU
    first_token_s: float = float("nan")  # the first token reaches the client (decode instance has the request)
    finish_s: float = float("nan")  # the last token is out
    tokens_out: int = 0  # tokens produced (first token included)
    retractions: int = 0  # times the decode instance retracted it for memory (watermark admission only)


@dataclass(frozen=True)
class StepSample:
    """One busy interval of one GPU: a prefill batch, a decode step, or the executor's part of a step.

    `instance` is the GPU's index among its kind's instances (executor samples carry the prefill GPU's
    index: the executor runs on that GPU).
    """

    kind: str
    instance: int
    start_s: float
    end_s: float
    flops: float
    bytes: float
    batch: int  # requests in the batch (prefill: prompts; decode: local + offloaded rows)
    offloaded_rows: int = 0  # decode: rows whose attention ran remotely; executor: rows it served
    hidden_roundtrip_ms: float = 0.0  # decode: round-trip time hidden under local attention (whole model)
    exposed_roundtrip_ms: float = 0.0  # decode: round-trip time that lengthened the step (whole model)


@dataclass(frozen=True)
class MemSample:
    """KV memory of one GPU right after a change (tokens; used <= reserved <= capacity)."""

    kind: str  # PREFILL or DECODE
    instance: int
    t_s: float
    kv_used_tokens: int  # tokens whose KV is in HBM now
    kv_reserved_tokens: int  # tokens allocated to admitted requests (their maximum sequence lengths)


@dataclass(frozen=True)
class InstanceInfo:
    """Static facts of one GPU kind that the metrics need."""

    hbm_bytes: float
    weight_bytes: float
    kv_bytes_per_token: float
    kv_capacity_tokens: int
    peak_flops: float
    peak_hbm_bytes_per_s: float


@dataclass
class SimResult:
    """Everything a run produced, plus the resolved configs (as dicts) for the results folder."""

    requests: list[RequestRecord]
    steps: list[StepSample]
    mem: list[MemSample]
    info: InstanceInfo
    config: dict = field(default_factory=dict)

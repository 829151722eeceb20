"""Offload bounds OB_mem, OB_comp, OB (paper, "load-aware offloading scheduling"; ../shared/design/adrenaline.md).

    OB_mem  = min( sum_i HBM_p_i / HBM_d , sum_i BW_p_i / BW_d )      over the prefill instances
    OB_comp = (B_max - B_TPOT) / B_TPOT
    OB      = min(OB_mem, OB_comp)

Our readings (documented in docs/simulator.md):
- HBM_p_i: KV bytes prefill instance i can give to offloaded requests; HBM_d: the decode KV capacity.
- BW_p_i / BW_d: decode-attention throughput of the executor at its SM share over the decode GPU's, both
  from the cost model at a reference batch (B_TPOT_mem sequences of `avg_context_tokens`), times
  (1 - bw_contention_frac) for the bandwidth the colocated prefill takes.
- B_TPOT = min(B_slo, B_mem): B_slo is the largest local batch whose whole decode step meets the TPOT SLO,
  B_mem the largest whose KV (at `avg_context_tokens` each) fits HBM_d.
- B_max: the largest total batch whose non-attention work plus the local attention of B_TPOT sequences
  meets the SLO (remote attention hides under local attention, which admission C2 keeps true).
- When B_slo <= B_mem the decode instance is bound by the SLO, not by memory, and a bigger batch cannot
  meet the SLO: OB_comp = 0. This also makes OB monotone in the SLO (a tighter SLO never raises it).
- Empty state: B_TPOT = 0 or HBM_d = 0 or no prefill instance gives OB = 0 (no division by zero).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from adrenaline_sgl.scheduler.cost_model import Predictor, check_sm_share
from adrenaline_sgl.scheduler.specs import GPUSpec, ModelSpec

DEFAULT_TPOT_SLO_MS = 100.0  # our choice (the paper gives none); see docs/simulator.md
# The executor's share of the prefill GPU's SMs, for every layer (SGLang flag, colocation, proxy, simulator):
# decode attention is memory-bound and the paper measures ~20% of A100 SMs drawing ~60% of HBM bandwidth.
DEFAULT_EXECUTOR_SM_SHARE = 0.2
DEFAULT_MAX_BATCH = 2048  # search cap for B_slo and B_max
DEFAULT_MEM_FRACTION = 0.88  # share of HBM for weights + KV (SGLang's mem_fraction_static on 80 GB GPUs)
DEFAULT_PREFILL_RESERVE_TOKENS = 16384  # KV a prefill instance keeps for its own batches and pending sends


def check_executor_sm_share(share: float, field: str = "executor_sm_share") -> float:
    """The knob's one validator: a fraction of the prefill GPU's SMs in (0, 1); prefill keeps the rest (an
    executor on every SM is the `none` partitioner, not a share of 1)."""
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 < share < 1.0:
        raise ValueError(f"{field} must be in (0, 1) (the executor's fraction of the prefill GPU's SMs), got {share!r}")
    return float(share)


def kv_capacity_bytes(gpu: GPUSpec, model: ModelSpec, mem_fraction: float = DEFAULT_MEM_FRACTION) -> float:
    """KV bytes one instance holds: mem_fraction of HBM minus the weights (0 when the weights do not fit)."""
    if not 0.0 < mem_fraction <= 1.0:
        raise ValueError(f"mem_fraction must be in (0, 1], got {mem_fraction!r}")
    return max(0.0, mem_fraction * gpu.hbm_bytes - model.weight_bytes)


@dataclass(frozen=True)
class PrefillCapacity:
    """What one prefill instance offers to offloaded requests."""

    spare_kv_bytes: float  # HBM it can hold offloaded KV in (free + already held by offloaded requests)
    executor_sm_share: float = DEFAULT_EXECUTOR_SM_SHARE  # what the executor runs at now, (0, 1]: 1 = unpartitioned
    bw_contention_frac: float = 0.0  # share of the executor's bandwidth the colocated prefill takes, [0, 1)

    def __post_init__(self) -> None:
        if self.spare_kv_bytes < 0:
            raise ValueError(f"spare_kv_bytes must be >= 0, got {self.spare_kv_bytes!r}")
        check_sm_share(self.executor_sm_share, "executor_sm_share")
        if not 0.0 <= self.bw_contention_frac < 1.0:
            raise ValueError(f"bw_contention_frac must be in [0, 1), got {self.bw_contention_frac!r}")


@dataclass(frozen=True)
class BoundsInput:
    """Everything the bounds depend on. `predictor` is any cost-model predictor (`get_predictor`)."""

    predictor: Predictor
    tpot_slo_ms: float
    decode_kv_capacity_bytes: float  # HBM_d: KV bytes the decode instance holds
    prefill: tuple[PrefillCapacity, ...]  # one entry per prefill instance
    avg_context_tokens: float  # mean KV tokens per decoding sequence (live, or the workload's)
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        if not self.tpot_slo_ms > 0:
            raise ValueError(f"tpot_slo_ms must be > 0 (milliseconds), got {self.tpot_slo_ms!r}")
        if self.decode_kv_capacity_bytes < 0:
            raise ValueError(f"decode_kv_capacity_bytes must be >= 0, got {self.decode_kv_capacity_bytes!r}")
        if self.avg_context_tokens < 0:
            raise ValueError(f"avg_context_tokens must be >= 0, got {self.avg_context_tokens!r}")
        if not 1 <= self.max_batch <= 1 << 20:
            raise ValueError(f"max_batch must be in [1, 1048576], got {self.max_batch!r}")
        if not isinstance(self.prefill, tuple):
            object.__setattr__(self, "prefill", tuple(self.prefill))


@dataclass(frozen=True)
class Bounds:
    """Result of `compute_bounds`. Ratios are offloaded per local request (N / M)."""

    ob_mem: float
    ob_comp: float
    ob: float
    b_tpot: int
    b_max: int
    binding: str  # "prefill-hbm", "prefill-bandwidth", "compute", "slo" or "empty"
    reason: str  # one sentence: why that bound binds
    ob_mem_hbm: float = 0.0
    ob_mem_bw: float = 0.0
    b_slo: int = 0
    b_mem: int = 0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _largest(ok: Callable[[int], bool], hi: int) -> int:
    """Largest b in [0, hi] with ok(b), assuming ok is monotone (true then false); 0 if ok(1) fails."""
    if hi < 1 or not ok(1):
        return 0
    lo = 1  # ok(lo) holds
    if ok(hi):
        return hi
    while hi - lo > 1:  # ok(lo) and not ok(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def compute_bounds(inp: BoundsInput) -> Bounds:
    """OB_mem, OB_comp and OB for one decode instance and the prefill instances in `inp`."""
    p, slo, ctx = inp.predictor, inp.tpot_slo_ms, inp.avg_context_tokens
    kv_per_seq = max(ctx, 1.0) * p.model.kv_bytes_per_token
    b_mem = min(inp.max_batch, int(inp.decode_kv_capacity_bytes // kv_per_seq))
    b_slo = _largest(lambda b: p.decode_step_ms(b, round(b * ctx)) <= slo, inp.max_batch)
    b_tpot = min(b_slo, b_mem)
    if b_tpot == 0 or inp.decode_kv_capacity_bytes <= 0 or not inp.prefill:
        why = (
            "no local batch meets the TPOT SLO or fits decode memory"
            if b_tpot == 0
            else "no decode KV capacity"
            if inp.decode_kv_capacity_bytes <= 0
            else "no prefill instance"
        )
        return Bounds(0.0, 0.0, 0.0, b_tpot, b_tpot, "empty", f"nothing to offload: {why}", b_slo=b_slo, b_mem=b_mem)

    # OB_mem: capacity and bandwidth of the prefill side relative to the decode side
    ob_mem_hbm = sum(c.spare_kv_bytes for c in inp.prefill) / inp.decode_kv_capacity_bytes
    ref_b = max(1, b_mem)
    ref_ctx = round(ref_b * max(ctx, 1.0))
    full_ms = p.decode_attn_ms(ref_b, ref_ctx, 1.0)
    ob_mem_bw = sum(
        full_ms / p.decode_attn_ms(ref_b, ref_ctx, c.executor_sm_share) * (1.0 - c.bw_contention_frac)
        for c in inp.prefill
    )
    ob_mem = min(ob_mem_hbm, ob_mem_bw)

    # OB_comp: how far non-attention work can grow while the local attention of B_TPOT still fits the SLO
    if b_slo <= b_mem:
        b_max, ob_comp = b_tpot, 0.0
    else:
        local_attn_ms = p.decode_attn_ms(b_tpot, round(b_tpot * ctx))
        b_max = max(b_tpot, _largest(lambda b: p.decode_nonattn_ms(b) + local_attn_ms <= slo, inp.max_batch))
        ob_comp = (b_max - b_tpot) / b_tpot
    ob = min(ob_mem, ob_comp)

    if b_slo <= b_mem:
        binding, reason = (
            "slo",
            (
                f"the local batch is bound by the TPOT SLO ({b_slo} <= {b_mem} that fit in memory), "
                "so a larger batch cannot meet it"
            ),
        )
    elif ob_comp <= ob_mem:
        binding, reason = (
            "compute",
            (
                f"non-attention work of more than B_max={b_max} rows (local batch {b_tpot}) "
                f"would break the {slo:g} ms TPOT SLO"
            ),
        )
    elif ob_mem_hbm <= ob_mem_bw:
        binding, reason = "prefill-hbm", "spare prefill HBM for offloaded KV is the scarcest resource"
    else:
        binding, reason = (
            "prefill-bandwidth",
            ("the executor's HBM bandwidth at its SM share cannot hide more attention under the local attention"),
        )
    return Bounds(ob_mem, ob_comp, ob, b_tpot, b_max, binding, reason, ob_mem_hbm, ob_mem_bw, b_slo, b_mem)

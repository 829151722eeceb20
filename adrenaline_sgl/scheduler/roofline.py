"""Roofline predictor: time = max(compute roof, memory roof) with per-operator efficiency curves.

For one call with work W (see `ops.py`) on a GPU with peak P FLOP/s and HBM bandwidth B, at SM share s:

    traffic   = W.min_bytes + W.reread_bytes * W.rows / reread_rows         (L2-missing tile re-reads)
    eff_c(M)  = compute_max * M^n / (M^n + compute_half_rows^n)             (GEMM ramp with M = W.rows)
    eff_m(U)  = mem_max * U / (U + mem_half_units)                          (occupancy, U = parallel units)
    ms        = max(W.flops / (P * s * eff_c), traffic / (B * bw_share(s) * eff_m)) + kernels * FIXED_US

`bw_share(s) = s (1 + h) / (s + h)` is the HBM bandwidth a partition of s of the SMs can draw, relative to
the whole GPU; h = 0.148 makes 20% of the SMs draw 60% of the peak bandwidth for decode attention on
A100, as the paper reports (0.6 / 0.91, 0.91 being full-GPU decode attention).

The parameters in `A100_EFFICIENCY` are fitted ONLY to the paper's A100 per-kernel utilizations
(`calibration.PAPER_KERNELS`, Llama-2 7B); `docs/simulator.md` shows the fit and its error, and checks
the resulting times against Vidur's measured operator times. The same efficiencies are used for H100 and
H200 (an assumption: no per-kernel data for them; the Vidur H100 table reports the error it causes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from adrenaline_sgl.scheduler.collectives import CommModel
from adrenaline_sgl.scheduler.cost_model import OpCost, Predictor, fractions, validate_op_args
from adrenaline_sgl.scheduler.ops import op_work
from adrenaline_sgl.scheduler.specs import GPUSpec, ModelSpec

FIXED_US_PER_KERNEL = 3.0  # floor of a small kernel under CUDA graphs (ramp + tail), not fitted
SM_SHARE_BW_HALF = 0.148  # h in bw_share(s); see the module docstring


@dataclass(frozen=True)
class OpEfficiency:
    """Efficiency curve parameters of one operator in one phase."""

    compute_max: float  # tensor-core efficiency at large M
    compute_half_rows: float  # M where the compute efficiency is half of compute_max
    compute_hill: float  # steepness of the compute ramp
    mem_max: float  # HBM efficiency with enough parallel work
    mem_half_units: float  # parallel units where the HBM efficiency is half of mem_max (0: flat)
    reread_rows: float  # one extra pass over reread_bytes per this many rows (math.inf: none)
    issue_per_hbm: float  # SM issue share per unit of HBM fraction (the compute_frac model)
    kernels: int = 1

    def __post_init__(self) -> None:
        for field in ("compute_max", "mem_max"):
            if not 0.0 < getattr(self, field) <= 1.0:
                raise ValueError(f"OpEfficiency.{field} must be in (0, 1], got {getattr(self, field)!r}")
        for field in ("compute_half_rows", "compute_hill", "mem_half_units", "issue_per_hbm"):
            if getattr(self, field) < 0:
                raise ValueError(f"OpEfficiency.{field} must be >= 0, got {getattr(self, field)!r}")
        if not self.reread_rows > 0:
            raise ValueError(f"OpEfficiency.reread_rows must be > 0, got {self.reread_rows!r}")

    def compute_eff(self, rows: float) -> float:
        if self.compute_half_rows == 0.0:
            return self.compute_max
        r = max(rows, 1.0) ** self.compute_hill
        return self.compute_max * r / (r + self.compute_half_rows**self.compute_hill)

    def mem_eff(self, units: float) -> float:
        if self.mem_half_units == 0.0:
            return self.mem_max
        u = max(units, 1.0)
        return self.mem_max * u / (u + self.mem_half_units)


def bw_share(sm_share: float) -> float:
    """HBM bandwidth a partition of `sm_share` of the SMs draws, relative to the whole GPU."""
    h = SM_SHARE_BW_HALF
    return sm_share * (1.0 + h) / (sm_share + h)


_INF = math.inf
# Fitted by `python -m adrenaline_sgl.tools.calibrate --fit` (grid search, see docs/simulator.md).
# Keys: (op, phase). misc and sampling have no per-kernel data in the paper: they borrow the memory
# efficiency of the decode GEMMs and the compute curve of the FFN (a stated assumption).
A100_EFFICIENCY: dict[tuple[str, str], OpEfficiency] = {
    ("qkv", "prefill"): OpEfficiency(0.775, 128.0, 1.0, 0.85, 0.0, 1024.0, 0.30),
    ("qkv", "decode"): OpEfficiency(0.775, 128.0, 1.0, 0.85, 0.0, 1024.0, 0.30),
    ("o_proj", "prefill"): OpEfficiency(0.85, 192.0, 1.0, 0.95, 0.0, 1024.0, 0.30),
    ("o_proj", "decode"): OpEfficiency(0.85, 192.0, 1.0, 0.95, 0.0, 1024.0, 0.30),
    ("ffn", "prefill"): OpEfficiency(0.825, 128.0, 1.0, 0.75, 0.0, 1536.0, 0.30, kernels=3),
    ("ffn", "decode"): OpEfficiency(0.825, 128.0, 1.0, 0.75, 0.0, 1536.0, 0.30, kernels=3),
    ("attn", "prefill"): OpEfficiency(0.70, 2048.0, 1.0, 0.525, 512.0, _INF, 0.60),
    ("attn", "decode"): OpEfficiency(0.50, 0.0, 1.0, 0.95, 96.0, _INF, 0.01),
    # not in the paper's per-kernel data: elementwise kernels at the decode FFN's memory efficiency
    ("misc", "prefill"): OpEfficiency(0.50, 0.0, 1.0, 0.75, 0.0, _INF, 0.30, kernels=4),
    ("misc", "decode"): OpEfficiency(0.50, 0.0, 1.0, 0.75, 0.0, _INF, 0.30, kernels=4),
    # LM head GEMM like the FFN's GEMMs, plus softmax and sampling kernels
    ("sampling", "prefill"): OpEfficiency(0.825, 128.0, 1.0, 0.75, 0.0, 1536.0, 0.30, kernels=3),
    ("sampling", "decode"): OpEfficiency(0.825, 128.0, 1.0, 0.75, 0.0, 1536.0, 0.30, kernels=3),
}


class RooflinePredictor(Predictor):
    """Analytical predictor; `efficiency` overrides entries of `A100_EFFICIENCY` (for fits and tests).

    At TP > 1 the same efficiency curves apply to each GPU's narrower shard (no TP data was fitted; the
    Vidur TP 2/4/8 check in docs/simulator.md reports what that costs)."""

    name = "roofline"

    def __init__(
        self,
        gpu: str | GPUSpec,
        model: str | ModelSpec,
        efficiency: dict[tuple[str, str], OpEfficiency] | None = None,
        tp: int = 1,
        comm: CommModel | None = None,
    ) -> None:
        super().__init__(gpu, model, tp, comm)
        self.efficiency = {**A100_EFFICIENCY, **(efficiency or {})}

    def with_efficiency(self, key: tuple[str, str], **changes: float) -> RooflinePredictor:
        """A copy with one operator's efficiency parameters changed."""
        changed = {**self.efficiency, key: replace(self.efficiency[key], **changes)}
        return RooflinePredictor(self.gpu, self.model, changed, self.tp, self._comm)

    def op_cost(
        self,
        op: str,
        phase: str,
        num_tokens: int,
        context_tokens: int = 0,
        num_seqs: int = 1,
        sm_share: float = 1.0,
    ) -> OpCost:
        validate_op_args(op, phase, num_tokens, sm_share)
        work = op_work(self.shard, op, phase, num_tokens, context_tokens, num_seqs)
        if work.flops == 0.0 and work.min_bytes == 0.0:
            return OpCost(op, phase, 0.0, 0.0, 0.0)
        eff = self.efficiency[(op, phase)]
        traffic = work.min_bytes
        if work.reread_bytes and eff.reread_rows != _INF:
            traffic += work.reread_bytes * work.rows / eff.reread_rows
        compute_s = work.flops / (self.gpu.peak_flops * sm_share * eff.compute_eff(work.rows))
        memory_s = traffic / (self.gpu.hbm_bytes_per_s * bw_share(sm_share) * eff.mem_eff(work.parallel_units))
        ms = max(compute_s, memory_s) * 1e3 + eff.kernels * FIXED_US_PER_KERNEL * 1e-3
        tensor, hbm, compute = fractions(self.gpu, ms, work.flops, traffic, eff.issue_per_hbm, sm_share)
        return OpCost(op, phase, ms, work.flops, traffic, tensor, hbm, compute)

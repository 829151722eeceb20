"""The paper's A100 per-kernel utilizations (the roofline's calibration data) and the model's against them.

`PAPER_KERNELS` is the per-kernel data of ../shared/design/adrenaline.md (Llama-2 7B, A100-80GB, fp16):
(op, phase, size, compute %, HBM %), size = prompt length (prefill, one prompt) or batch (decode). The
decode attention context per sequence is not given; we evaluate it at `DECODE_CONTEXT_TOKENS` (its
predicted fractions barely depend on it: the kernel streams KV at a bandwidth set by the batch).

Data only: the fit, the markdown tables and the CLI are `adrenaline_sgl.tools.calibrate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from adrenaline_sgl.scheduler.cost_model import OpCost
from adrenaline_sgl.scheduler.roofline import RooflinePredictor

DECODE_CONTEXT_TOKENS = 512
# (op, phase, size, compute %, HBM bandwidth %); decode attention compute "about 1-2" is taken as 1.5
PAPER_KERNELS: tuple[tuple[str, str, int, float, float], ...] = tuple(
    (op, phase, size, c, m)
    for op, phase, sizes, comp, mem in (
        ("qkv", "prefill", (512, 1024, 2048, 4096), (81, 80, 78, 81), (31, 20, 18, 18)),
        ("attn", "prefill", (512, 1024, 2048, 4096), (15, 32, 43, 53), (5, 15, 14, 10)),
        ("o_proj", "prefill", (512, 1024, 2048, 4096), (68, 75, 88, 87), (28, 22, 24, 26)),
        ("ffn", "prefill", (512, 1024, 2048, 4096), (79, 86, 81, 84), (33, 22, 22, 18)),
        ("qkv", "decode", (16, 32, 64, 80), (40, 34, 33, 48), (77, 66, 74, 57)),
        ("attn", "decode", (16, 32, 64, 80), (1.5, 1.5, 1.5, 1.5), (76, 85, 91, 91)),
        ("o_proj", "decode", (16, 32, 64, 80), (30, 26, 23, 42), (56, 50, 51, 50)),
        ("ffn", "decode", (16, 32, 64, 80), (37, 36, 32, 53), (72, 70, 72, 64)),
    )
    for size, c, m in zip(sizes, comp, mem, strict=True)
)
# Whole-phase utilizations (figure 1 of the paper): NOT used by the fit, only compared against.
PAPER_PHASES: tuple[tuple[str, int, float, float], ...] = tuple(
    ("prefill", size, c, m)
    for size, c, m in zip(
        range(512, 4097, 512), (51, 67, 69, 66, 69, 67, 68, 69), (24, 23, 24, 23.5, 23.5, 22.5, 23.5, 21.5), strict=True
    )
) + tuple(
    ("decode", size, c, m)
    for size, c, m in zip(
        range(8, 81, 8),
        (26, 21.5, 18.5, 16.5, 14.5, 13, 12, 11, 18.5, 17.5),
        (67.5, 70, 72.5, 74, 74, 75, 76.5, 77, 72.5, 73),
        strict=True,
    )
)
PHASE_MAX_HBM_ERROR_PP = 10.0  # stated: whole-phase HBM fraction within 10 pp (compute: reported only)
# Stated error bounds (percentage points) that tests/tools/test_calibrate.py enforces.
MAX_MEAN_ABS_ERROR_PP = 4.0
MAX_ABS_ERROR_PP = 16.0


@dataclass(frozen=True)
class CalibrationRow:
    op: str
    phase: str
    size: int
    paper_compute_pct: float
    model_compute_pct: float
    paper_hbm_pct: float
    model_hbm_pct: float

    @property
    def compute_err_pp(self) -> float:
        return self.model_compute_pct - self.paper_compute_pct

    @property
    def hbm_err_pp(self) -> float:
        return self.model_hbm_pct - self.paper_hbm_pct


def predict_point(p: RooflinePredictor, op: str, phase: str, size: int) -> tuple[float, float]:
    """(compute %, HBM %) the predictor gives for one paper data point."""
    if op == "attn" and phase == "decode":
        c = p.op_cost("attn", "decode", size, size * DECODE_CONTEXT_TOKENS, size)
    else:
        c = p.op_cost(op, phase, size)
    return 100.0 * c.compute_frac, 100.0 * c.hbm_frac


def calibration_rows(p: RooflinePredictor | None = None) -> list[CalibrationRow]:
    p = p or RooflinePredictor("a100-80g", "llama2-7b")
    rows = []
    for op, phase, size, comp, mem in PAPER_KERNELS:
        mc, mm = predict_point(p, op, phase, size)
        rows.append(CalibrationRow(op, phase, size, comp, mc, mem, mm))
    return rows


def error_summary(rows: list[CalibrationRow]) -> dict[str, float]:
    errs = [abs(r.compute_err_pp) for r in rows] + [abs(r.hbm_err_pp) for r in rows]
    return {
        "mean_abs_compute_pp": sum(abs(r.compute_err_pp) for r in rows) / len(rows),
        "mean_abs_hbm_pp": sum(abs(r.hbm_err_pp) for r in rows) / len(rows),
        "mean_abs_pp": sum(errs) / len(errs),
        "max_abs_pp": max(errs),
    }


def phase_rows(p: RooflinePredictor | None = None) -> list[CalibrationRow]:
    """Whole-step utilization (all layers and sampling) against the paper's figure-1 data; decode steps at
    `DECODE_CONTEXT_TOKENS` per sequence, prefill one prompt."""
    p = p or RooflinePredictor("a100-80g", "llama2-7b")
    rows = []
    for phase, size, comp, mem in PAPER_PHASES:
        costs = (
            p.prefill_step_costs([size])
            if phase == "prefill"
            else p.decode_step_costs(size, size * DECODE_CONTEXT_TOKENS)
        )
        c = OpCost.combine(costs)
        rows.append(CalibrationRow("step", phase, size, comp, 100.0 * c.compute_frac, mem, 100.0 * c.hbm_frac))
    return rows

"""Figure 2: per-kernel compute and HBM-bandwidth utilization in prefill and decode.

Writes `$RESULTS_DIR/fig2/kernels.csv` (phase, op, size, source, compute_pct, hbm_bw_pct; one row per
plotted point), `meta.csv`, `config.resolved.yaml`, then `fig2.png`.
NOTE: the paper's per-kernel points are the data the roofline predictor was fitted to
(adrenaline_sgl/scheduler/calibration.py; the fit is adrenaline_sgl/tools/calibrate.py), so this figure shows
the fit, not an independent prediction.
"""

from __future__ import annotations

from pathlib import Path

from adrenaline_sgl.scheduler.calibration import PAPER_KERNELS, predict_point
from adrenaline_sgl.scheduler.cost_model import get_predictor

from .. import common

HERE = Path(__file__).resolve().parent
FIG = "fig2"
COMMON_ARGS = True  # takes experiments.common's flags (experiments/run.py passes `all`'s ARGS)
OPS = ("qkv", "attn", "o_proj", "ffn")


@common.guarded
def main(argv: list[str] | None = None) -> int:
    args, cfg, out = common.start_simulated(FIG, HERE, __doc__, argv)
    common.write_meta(out, args.mode, gpu=cfg["gpu"], model=cfg["model"])
    pred = get_predictor("roofline", cfg["gpu"], cfg["model"])
    rows = []
    for phase, sizes in (("prefill", cfg["prefill_prompt_lens"]), ("decode", cfg["decode_batches"])):
        for op in OPS:
            for size in sizes:
                rows.append([phase, op, int(size), "model", *predict_point(pred, op, phase, int(size))])
    if cfg["model"] == "llama2-7b" and cfg["gpu"] == "a100-80g":
        rows += [[phase, op, size, "paper", c, m] for op, phase, size, c, m in PAPER_KERNELS]
    common.write_csv(out / "kernels.csv", ["phase", "op", "size", "source", "compute_pct", "hbm_bw_pct"], rows)
    return common.finish(FIG, out, args.no_plot)

"""Figure 1: prefill compute/bandwidth vs prompt length, decode compute/bandwidth vs batch, HBM capacity
over time, under plain PD. The paper's published measurements are written beside the model's values.

Writes `$RESULTS_DIR/fig1/{prefill,decode,capacity}.csv` (one row per plotted point), `meta.csv`,
`config.resolved.yaml`, then `fig1.png`. Utilizations are percentages of the data-sheet peaks; "compute"
is the cost model's `compute_frac` (the paper's SM-throughput counter, see adrenaline_sgl/scheduler).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adrenaline_sgl.scheduler.cost_model import OpCost, get_predictor
from adrenaline_sgl.sim import metrics
from adrenaline_sgl.sim.records import DECODE, PREFILL

from .. import common, sim_runs

HERE = Path(__file__).resolve().parent
FIG = "fig1"
COMMON_ARGS = True  # takes experiments.common's flags (experiments/run.py passes `all`'s ARGS)
# Published whole-phase utilization, Llama-2 7B on A100 (../shared/design/adrenaline.md): measurements
# shown for comparison; the cost model was fitted to per-kernel data only, not to these.
PAPER_PREFILL = {512: (51, 24), 1024: (67, 23), 1536: (69, 24), 2048: (66, 23.5), 2560: (69, 23.5),
                 3072: (67, 22.5), 3584: (68, 23.5), 4096: (69, 21.5)}  # fmt: skip
PAPER_DECODE = {8: (26, 67.5), 16: (21.5, 70), 24: (18.5, 72.5), 32: (16.5, 74), 40: (14.5, 74), 48: (13, 75),
                56: (12, 76.5), 64: (11, 77), 72: (18.5, 72.5), 80: (17.5, 73)}  # fmt: skip


def _pct(costs: list[OpCost]) -> tuple[float, float]:
    c = OpCost.combine(costs)
    return 100.0 * c.compute_frac, 100.0 * c.hbm_frac


@common.guarded
def main(argv: list[str] | None = None) -> int:
    args, cfg, out = common.start_simulated(FIG, HERE, __doc__, argv)
    common.write_meta(out, args.mode, gpu=cfg["gpu"], model=cfg["model"])
    pred = get_predictor("roofline", cfg["gpu"], cfg["model"])

    rows = [["paper", n, *PAPER_PREFILL[n]] for n in cfg["prompt_lens"] if n in PAPER_PREFILL]
    rows += [["model", n, *_pct(pred.prefill_step_costs([int(n)]))] for n in cfg["prompt_lens"]]
    common.write_csv(out / "prefill.csv", ["source", "prompt_len", "compute_pct", "hbm_bw_pct"], rows)

    ctx = int(cfg["decode_context_tokens"])
    rows = [["paper", b, *PAPER_DECODE[b]] for b in cfg["decode_batches"] if b in PAPER_DECODE]
    rows += [["model", b, *_pct(pred.decode_step_costs(int(b), int(b) * ctx))] for b in cfg["decode_batches"]]
    common.write_csv(out / "decode.csv", ["source", "batch", "compute_pct", "hbm_bw_pct"], rows)

    pt = common.sweep([cfg["request_rate"]], lambda r: sim_runs.run_point(cfg, cfg["model"], "never",
                                                                          cfg["workload"], float(r)), FIG)[0]
    end = max(r.finish_s for r in pt.result.requests)
    grid = np.linspace(0.0, end, int(cfg["timeline_points"]))
    rows = []
    for kind in (PREFILL, DECODE):
        frac = metrics.capacity_timeline(pt.result, kind, 0, grid)
        rows += [[kind, float(t), 100.0 * float(f)] for t, f in zip(grid, frac)]
    common.write_csv(out / "capacity.csv", ["instance", "t_s", "hbm_capacity_pct"], rows)
    return common.finish(FIG, out, args.no_plot)

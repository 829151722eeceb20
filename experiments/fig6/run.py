"""Figure 6: prefill HBM bandwidth, decode TFLOP/s and prefill HBM capacity vs offload ratio (simulated).

Writes `$RESULTS_DIR/fig6/utilization.csv` (model, system, offload_ratio, prefill_hbm_bw_gbs,
decode_tflops, prefill_hbm_capacity_frac over the steady-state window, arrivals 10%..100%; request_rate:
the highest load the point sustains, at which it ran; achieved_offload_ratio: offloaded rows per local
row actually decoded, N/M; decode_hbm_capacity_frac), `capacity_timeline.csv` (model, system,
offload_ratio, t_s, prefill_hbm_capacity_frac), `meta.csv`, `config.resolved.yaml`, then `fig6.png`.
Ratio 0 is the PD baseline; ratio F is Adrenaline with the scheduler's fixed bound OB = F.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adrenaline_sgl.scheduler.admission import ratio_policy
from adrenaline_sgl.sim import metrics
from adrenaline_sgl.sim.records import PREFILL

from .. import common, sim_runs

HERE = Path(__file__).resolve().parent
FIG = "fig6"
COMMON_ARGS = True  # takes experiments.common's flags (experiments/run.py passes `all`'s ARGS)


@common.guarded
def main(argv: list[str] | None = None) -> int:
    args, cfg, out = common.start_simulated(FIG, HERE, __doc__, argv)
    common.write_meta(out, args.mode, gpu=cfg["gpu"], workload=cfg["workload"])
    points = [(m, float(r)) for m in cfg["models"] for r in cfg["offload_ratios"]]
    for model in cfg["models"]:
        if model not in (cfg.get("search") or {}):
            raise common.ExperimentError(f"fig6 config has no search settings for model {model!r}")

    def one(p) -> tuple[list, list]:  # runs in a worker: return rows, not the raw records
        model, ratio = p
        found = sim_runs.max_throughput(cfg, model, ratio_policy(ratio), cfg["workload"], key=model)
        rate = found["request_rate"]
        if not rate > 0:
            raise common.ExperimentError(f"fig6: {model} at ratio {ratio} sustains not even the search's rate_lo")
        pt = sim_runs.run_point(cfg, model, ratio_policy(ratio), cfg["workload"], rate)
        system = "pd" if ratio == 0 else "adrenaline"
        window = metrics.steady_window(pt.result.requests)
        u = metrics.utilization(pt.result, 1, 1, window)
        row = [model, system, ratio, u.prefill_hbm_bw_gbs, u.decode_tflops, u.prefill_hbm_capacity_frac, rate,
               metrics.achieved_offload_ratio(pt.result.steps, window), u.decode_hbm_capacity_frac]
        end = max(r.finish_s for r in pt.result.requests)
        grid = np.linspace(0.0, end, int(cfg["timeline_points"]))
        frac = metrics.capacity_timeline(pt.result, PREFILL, 0, grid)
        return row, [[model, system, ratio, float(t), float(f)] for t, f in zip(grid, frac)]

    rows, timeline = [], []
    for row, tl in common.sweep(points, one, FIG):
        rows.append(row)
        timeline += tl
    common.write_csv(out / "utilization.csv", ["model", "system", "offload_ratio", "prefill_hbm_bw_gbs",
                                               "decode_tflops", "prefill_hbm_capacity_frac", "request_rate",
                                               "achieved_offload_ratio", "decode_hbm_capacity_frac"], rows)  # fmt: skip
    common.write_csv(out / "capacity_timeline.csv", ["model", "system", "offload_ratio", "t_s",
                                                     "prefill_hbm_capacity_frac"], timeline)  # fmt: skip
    return common.finish(FIG, out, args.no_plot)

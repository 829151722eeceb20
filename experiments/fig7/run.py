"""Figure 7: decode-throughput gain of Adrenaline over PD per model x workload (simulated).

Writes `$RESULTS_DIR/fig7/throughput.csv` (model, workload, system, decode_throughput_tok_s, gain; gain is
adrenaline over pd, 1.0 on the pd rows), `sustainable.csv` (the rate found, TPOT, P90 TTFT),
`meta.csv`, `config.resolved.yaml`, then `fig7.png`. The SLO is in experiments/fig7/README.md.
"""

from __future__ import annotations

import math
from pathlib import Path

from .. import common, sim_runs

HERE = Path(__file__).resolve().parent
FIG = "fig7"
COMMON_ARGS = True  # takes experiments.common's flags (experiments/run.py passes `all`'s ARGS)


@common.guarded
def main(argv: list[str] | None = None) -> int:
    args, cfg, out = common.start_simulated(FIG, HERE, __doc__, argv)
    common.write_meta(out, args.mode, gpu=cfg["gpu"], tpot_slo_ms=cfg["tpot_slo_ms"],
                      ttft_slo_s=cfg["ttft_slo_s"])
    points = [(m, w, s) for m in cfg["models"] for w in cfg["workloads"] for s in cfg["systems"]]
    found = common.sweep(points, lambda p: sim_runs.max_throughput(cfg, p[0], sim_runs.policy_of(p[2]), p[1]), FIG)
    by_point = dict(zip(points, found))
    rows, detail = [], []
    for (model, wl, system), d in by_point.items():
        base = by_point.get((model, wl, "pd"), {}).get("decode_throughput_tok_s", math.nan)
        thr = d["decode_throughput_tok_s"]
        rows.append([model, wl, system, thr, thr / base if base > 0 else math.nan])
        detail.append([model, wl, system, d["request_rate"], thr, d["mean_tpot_ms"], d["p99_tpot_ms"],
                       d["p90_ttft_s"], d["offloaded_frac"], d["steady_throughput_tok_s"],
                       d["achieved_offload_ratio"]])
    common.write_csv(out / "throughput.csv", ["model", "workload", "system", "decode_throughput_tok_s", "gain"], rows)
    common.write_csv(out / "sustainable.csv", ["model", "workload", "system", "request_rate",
                                               "decode_throughput_tok_s", "mean_tpot_ms", "p99_tpot_ms",
                                               "p90_ttft_s", "offloaded_frac", "steady_throughput_tok_s",
                                               "achieved_offload_ratio"],
                     detail)  # fmt: skip
    return common.finish(FIG, out, args.no_plot)

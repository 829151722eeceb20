"""Figure 8: decode throughput vs offload ratio per workload, with the scheduler's choice marked (simulated).

Writes `$RESULTS_DIR/fig8/sensitivity.csv` (model, workload, offload_ratio, decode_throughput_tok_s;
offload_ratio is a number, 0 for the PD baseline, or `auto`), `sustainable.csv` (the rate found, TPOT,
P90 TTFT, and the share of requests offloaded), `meta.csv`, `config.resolved.yaml`, then
`fig8.png`.
"""

from __future__ import annotations

from pathlib import Path

from adrenaline_sgl.scheduler.admission import ratio_policy

from .. import common, sim_runs

HERE = Path(__file__).resolve().parent
FIG = "fig8"
COMMON_ARGS = True  # takes experiments.common's flags (experiments/run.py passes `all`'s ARGS)


def policy_of(ratio) -> str:
    if ratio == "auto":
        return "auto"
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise common.ExperimentError(f"offload ratio {ratio!r} must be a number >= 0 or 'auto'") from None
    try:
        return ratio_policy(value)
    except ValueError as err:
        raise common.ExperimentError(f"offload ratio {ratio!r} must be a number >= 0 or 'auto' ({err})") from None


@common.guarded
def main(argv: list[str] | None = None) -> int:
    args, cfg, out = common.start_simulated(FIG, HERE, __doc__, argv)
    common.write_meta(out, args.mode, gpu=cfg["gpu"], tpot_slo_ms=cfg["tpot_slo_ms"],
                      ttft_slo_s=cfg["ttft_slo_s"])
    model = cfg["model"]
    points = [(w, r) for w in cfg["workloads"] for r in cfg["offload_ratios"]]
    policies = {r: policy_of(r) for r in cfg["offload_ratios"]}
    found = common.sweep(points, lambda p: sim_runs.max_throughput(cfg, model, policies[p[1]], p[0]), FIG)
    rows, detail = [], []
    for (wl, ratio), d in zip(points, found):
        label = "auto" if ratio == "auto" else float(ratio)
        rows.append([model, wl, label, d["decode_throughput_tok_s"]])
        detail.append([model, wl, label, d["request_rate"], d["decode_throughput_tok_s"],
                       d["mean_tpot_ms"], d["p99_tpot_ms"], d["p90_ttft_s"], d["offloaded_frac"],
                       d["steady_throughput_tok_s"], d["achieved_offload_ratio"]])
    common.write_csv(out / "sensitivity.csv", ["model", "workload", "offload_ratio", "decode_throughput_tok_s"], rows)
    common.write_csv(out / "sustainable.csv", ["model", "workload", "offload_ratio", "request_rate",
                                               "decode_throughput_tok_s", "mean_tpot_ms", "p99_tpot_ms",
                                               "p90_ttft_s", "offloaded_frac", "steady_throughput_tok_s",
                                               "achieved_offload_ratio"],
                     detail)  # fmt: skip
    return common.finish(FIG, out, args.no_plot)

"""Figure 5: mean TTFT, mean and P99 TPOT and decode throughput vs request rate, PD vs Adrenaline.

Writes `$RESULTS_DIR/fig5/e2e.csv` (the contract columns), `e2e_detail.csv` (plus offloaded share, P99
TTFT, hidden round-trip share, steady-state and total-token throughputs), `requests.csv` (raw per-request
timestamps of every run, from which `adrenaline_sgl.sim.metrics` derives the rest), `config.resolved.yaml`,
then `fig5.png`. MODE=real measures live servers through experiments/real.py instead of simulating and
writes the same e2e.csv. MODE=emulated runs the sweep through real SGLang servers with an emulated GPU
(experiments/emulated.py, docs/emulator.md) and writes the same CSVs, plus the servers' timelines
(`timeline.csv`) and per-step overheads (`overheads.csv`).
"""

from __future__ import annotations

from pathlib import Path

from adrenaline_sgl.sim import metrics

from .. import common, emulated, real, sim_runs

HERE = Path(__file__).resolve().parent
FIG = "fig5"
COMMON_ARGS = True  # takes experiments.common's flags (experiments/run.py passes `all`'s ARGS)
E2E_COLUMNS = ["system", "model", "workload", "request_rate", "mean_ttft_s", "mean_tpot_ms", "p99_tpot_ms",
               "decode_throughput_tok_s"]  # fmt: skip
# e2e_detail.csv adds (docs/simulator.md, "Metrics"): steady_* over the steady-state window (arrivals 10%..100%,
# the drain after the last arrival excluded); total_* count prompt + output tokens (bench_serving's total).
DETAIL_COLUMNS = ["p99_ttft_s", "offloaded_frac", "roundtrip_hidden_frac", "completed", "steady_throughput_tok_s",
                  "total_throughput_tok_s", "steady_total_throughput_tok_s"]  # fmt: skip


def _sim_rows(cfg: dict) -> tuple[list, list]:
    points = [(s, r) for s in cfg["systems"] for r in cfg["request_rates"]]
    model, wl = cfg["model"], cfg["workload"]

    def one(point) -> tuple[list, list]:  # runs in a worker: return rows, not the whole SimResult
        system, rate = point
        pt = sim_runs.run_point(cfg, model, sim_runs.policy_of(system), wl, float(rate))
        m, steady = pt.req, metrics.steady_throughput(pt.result)
        summary = [system, model, wl, float(rate), m.mean_ttft_s, m.mean_tpot_ms, m.p99_tpot_ms,
                   m.decode_throughput_tok_s, m.p99_ttft_s, m.offloaded_frac,
                   metrics.roundtrip_hidden_frac(pt.result.steps), m.completed, steady.decode_tok_s,
                   m.total_throughput_tok_s, steady.total_tok_s]  # fmt: skip
        return summary, [[system, float(rate), *r] for r in sim_runs.request_rows(pt.result)]

    runs = common.sweep(points, one, FIG)
    detail = [summary for summary, _ in runs]
    requests = [row for _, rows in runs for row in rows]
    return [d[: len(E2E_COLUMNS)] for d in detail], detail, requests


def _real_rows(cfg: dict, out: Path) -> list:
    urls = real.check_servers(cfg["systems"])
    rows = []
    for system in cfg["systems"]:
        for rate in cfg["request_rates"]:
            jsonl = out / f"bench_{system}_{rate}.jsonl"
            cmd = real.bench_command(urls[system], cfg["workload"], float(rate), int(cfg["num_requests"]),
                                     int(cfg["seed"]), jsonl, (cfg.get("dataset_paths") or {}).get(cfg["workload"]))
            m = real.run_bench(cmd, jsonl)
            # the model column names what the live servers serve, not the simulator config's model
            rows.append([system, Path(real.model_path()).name, cfg["workload"], float(rate)]
                        + [m[c] for c in E2E_COLUMNS[4:]])
    return rows


def _emulated_rows(cfg: dict, out) -> tuple[list, list, list, list, list, list]:
    """Both systems' sweeps on emulated stacks; rows as the simulator's, plus timelines and overheads."""
    model, wl = cfg["model"], cfg["workload"]
    detail, requests, timelines, overheads, failures = [], [], [], [], []
    for system in cfg["systems"]:
        for pt in emulated.run_system(cfg, system, wl, [float(r) for r in cfg["request_rates"]],
                                      int(cfg["num_requests"]), out):
            m = metrics.request_metrics(pt.records)
            off = pt.offloaded / pt.routed if pt.routed else 0.0
            steady = emulated.steady_throughput(pt)
            detail.append([system, model, wl, pt.rate, m.mean_ttft_s, m.mean_tpot_ms, m.p99_tpot_ms,
                           m.decode_throughput_tok_s, m.p99_ttft_s, off, float("nan"), m.completed,
                           steady.decode_tok_s, m.total_throughput_tok_s, steady.total_tok_s])  # fmt: skip
            requests += [[system, pt.rate, *r] for r in sim_runs.request_rows(_with(pt))]
            timelines += emulated.timeline(pt)
            overheads += emulated.overheads(pt)
            failures += [f"{system} @ {pt.rate:g}: {f}" for f in pt.failures]
    return [d[: len(E2E_COLUMNS)] for d in detail], detail, requests, timelines, overheads, failures


def _with(pt):
    """A SimResult-like holder of the point's records (sim_runs.request_rows reads `.requests`)."""
    from types import SimpleNamespace

    return SimpleNamespace(requests=pt.records)


@common.guarded
def main(argv: list[str] | None = None) -> int:
    ap = common.base_parser(FIG, __doc__.splitlines()[0])
    ap.add_argument("--workload", help="sharegpt (default) | openthoughts | azure_conv | azure_code (with a trace CSV)")
    ap.add_argument("--dataset-path", help="dataset file instead of the synthetic lengths (ShareGPT JSON, "
                                           "OpenThoughts JSONL/parquet, Azure trace CSV)")
    ap.add_argument("--model", help="model name (default: the config's, llama2-13b)")
    ap.add_argument("--rates", help="comma-separated request rates (req/s) instead of the config's")
    args = ap.parse_args(argv)
    cfg = common.load_config(HERE)
    if args.mode == "emulated":  # its own, smaller sweep (config.yaml `emulated:`)
        cfg = emulated.figure_config(cfg, args.quick)
    else:
        cfg.pop("emulated", None)
    cfg = common.apply_common(cfg, args)
    if args.workload:
        cfg["workload"] = args.workload
    if args.dataset_path:
        cfg["dataset_paths"] = {cfg["workload"]: args.dataset_path}
    if args.model:
        cfg["model"] = args.model
    if args.rates:
        try:
            cfg["request_rates"] = [float(x) for x in args.rates.split(",")]
        except ValueError:
            raise common.ExperimentError(f"--rates={args.rates!r} must be comma-separated numbers") from None
    for rate in cfg["request_rates"]:
        if not float(rate) > 0:
            raise common.ExperimentError(f"request rate {rate!r} must be > 0 (requests/s)")
    out = common.results_dir(FIG)
    common.write_resolved(out, cfg, args.mode)
    common.write_meta(out, args.mode, gpu=cfg["gpu"], setup=f"{cfg['n_prefill']}P{cfg['n_decode']}D")
    failures = []
    if args.mode == "real":
        rows = _real_rows(cfg, out)
    elif args.mode == "emulated":
        rows, detail, requests, timelines, overheads, failures = _emulated_rows(cfg, out)
        common.write_csv(out / "e2e_detail.csv", E2E_COLUMNS + DETAIL_COLUMNS, detail)
        common.write_csv(out / "requests.csv", ["system", "request_rate", *sim_runs.REQUEST_COLUMNS], requests,
                         digits=12)
        common.write_csv(out / "timeline.csv", emulated.TIMELINE_COLUMNS, timelines)
        common.write_csv(out / "overheads.csv", emulated.OVERHEAD_COLUMNS, overheads)
    else:
        rows, detail, requests = _sim_rows(cfg)
        common.write_csv(out / "e2e_detail.csv", E2E_COLUMNS + DETAIL_COLUMNS, detail)
        common.write_csv(out / "requests.csv", ["system", "request_rate", *sim_runs.REQUEST_COLUMNS], requests,
                         digits=12)  # timestamps: microseconds at hours
    common.write_csv(out / "e2e.csv", E2E_COLUMNS, rows)
    status = common.finish(FIG, out, args.no_plot)
    if failures:  # every CSV is written; the run still fails, naming what did not complete
        print(f"fig5: {len(failures)} requests failed, e.g. {failures[:3]}", flush=True)
        return 1
    return status

"""Simulator vs real: the simulator predicts the real CPU experiment's sweep (`make compare-real-cpu`).

Inputs: a finished `make reproduce-real-cpu` (`$RESULTS_DIR/real_cpu/`: e2e.csv, requests.csv, the servers'
`/server_info`) and the SGLang profiles of this core (`make calibrate-real-cpu`: devices `cpu-epyc-1core-sgl`
for decode and `cpu-epyc-1core-sgl-exec` for prefill with its executor, table predictor). Nothing is fitted to
the end-to-end results: the cost of every step comes from the profiles' microbenchmarks, the cluster from the
same cluster YAMLs the servers ran (`sim_config`: pools, decode reserve, executor block, policy, and what the
servers themselves report: request slots, chunked prefill size), and the workload is exactly what the servers
saw: each point's requests with their lengths and their arrival times as bench_serving released them.

Metrics on both sides come from the same definitions (adrenaline_sgl/sim/metrics.py): mean TTFT, mean TPOT,
steady-state decode throughput (the measured one counted from the tokens' arrival at the client), and the
step-weighted mean decode batch (SGLang's decode counters vs the simulated steps).

Saturation (the knee), the same rule on both sides and fixed before any comparison: a point is saturated when
its steady-state throughput falls more than 10% below the offered load (rate x output tokens) or its P90 TTFT
exceeds config.yaml's `ttft_slo_s`; the knee is the lowest saturated rate of the sweep. Errors are reported
for every point; the headline is the median absolute relative error over the points below the measured knee.

Writes `sim_vs_real.csv` (per system and rate: measured, predicted, relative error of each metric),
`sim_vs_real_summary.csv` (per system and metric: median and max error below the knee, the two knees),
`validation.md` (the table docs/simulator.md quotes) and `sim_vs_real.png`; and `whatif_roundtrip_goal.csv`:
the offloading system's points predicted again with the per-layer round trip at issue 14 item 5's goal (a
prediction of what a faster sync path would give, not a validation).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import yaml

from experiments import common

from . import setup

FIG = "real_cpu"
DECODE_DEVICE, PREFILL_DEVICE, MODEL = "cpu-epyc-1core-sgl", "cpu-epyc-1core-sgl-exec", "smollm2-135m"
METRICS = ["steady_throughput_tok_s", "mean_tpot_ms", "mean_ttft_s", "decode_batch_mean"]
HEADLINE = ("steady_throughput_tok_s", "mean_tpot_ms")  # the 10% goal; TTFT and batch are reported
SATURATION_SHORTFALL = 0.10
DEFAULT_CHUNKED_PREFILL = 8192


def _arg(args: list[str], flag: str) -> str | None:
    """The value of the last `flag` in an argument list (SGLang's argparse: the last one wins)."""
    found = None
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            found = args[i + 1]
        elif a.startswith(flag + "="):
            found = a.split("=", 1)[1]
    return found


def sim_config(cfg: dict, system: str, server_info: dict | None = None, max_running: float | None = None):
    """The SimConfig of a system's stack: its cluster YAML's pools, reserve, executor block and policy, and
    what its servers reported (request slots, chunked prefill size)."""
    from adrenaline_sgl.sim.config import SimConfig

    data = yaml.safe_load((common.REPO_ROOT / cfg["clusters"][system]).read_text())
    common_args = list(data.get("server_args") or [])
    pre = common_args + list((data.get("prefill") or {}).get("extra_args") or [])
    dec = common_args + list((data.get("decode") or {}).get("extra_args") or [])
    decode_pool, prefill_pool = _arg(dec, "--max-total-tokens"), _arg(pre, "--max-total-tokens")
    if decode_pool is None or prefill_pool is None:
        raise common.ExperimentError(f"clusters.{system}: both servers need --max-total-tokens (the sim's pools)")
    reserve = _arg(dec, "--num-reserved-decode-tokens") or "512"
    executor_tokens = int(_arg(pre, "--adrenaline-executor-max-tokens") or 0)
    policy = "never"
    if system != "pd":
        policy = _arg(list((data.get("proxy") or {}).get("extra_args") or []), "--policy") or "never"
    info = (server_info or {}).get("prefill") or {}
    chunked = info.get("chunked_prefill_size") or DEFAULT_CHUNKED_PREFILL
    slots = int(max_running) if max_running and math.isfinite(max_running) else 256
    return SimConfig(model=MODEL, gpu=DECODE_DEVICE, prefill_gpu=PREFILL_DEVICE, predictor="table",
                     n_prefill=1, n_decode=1, offload=policy, executor_colocation="timeshare",
                     decode_kv_capacity_tokens=int(decode_pool), prefill_kv_capacity_tokens=int(prefill_pool),
                     prefill_kv_reserve_tokens=max(0, int(prefill_pool) - executor_tokens),
                     decode_reserved_tokens=int(reserve), decode_kv_admission="watermark",
                     max_decode_batch=slots, prefill_token_budget=int(chunked) if int(chunked) > 0 else 8192,
                     tpot_slo_ms=float(cfg["tpot_slo_ms"]))  # fmt: skip


# Issue 14 item 5's goal for the per-layer round trip: at most 1.3 x (raw Mooncake write + read of one layer's
# rows, 0.10 ms p50 measured on this machine, + the executor's attention). The what-if replaces the profile's
# transfer part with 1.3 x 0.10 ms + 0.3 x the executor's attention (the simulator adds the attention itself).
GOAL_FACTOR, GOAL_RAW_MS, GOAL_CONTEXT_TOKENS = 1.3, 0.10, 48  # 48: the 16 + 64 workload's mean context


def goal_roundtrip(costs):
    """The transfer part of a layer's round trip at item 5's goal, for `costs` (a SchedulerCosts)."""
    layers = costs.num_layers

    def transfer_ms(rows: int) -> float:
        if rows <= 0:
            return 0.0
        attn = costs.executor_attn(rows, rows * GOAL_CONTEXT_TOKENS, 1.0).ms / layers
        return GOAL_FACTOR * GOAL_RAW_MS + (GOAL_FACTOR - 1) * attn

    return transfer_ms


def simulate_point(sim_cfg, reqs: list[dict], roundtrip_goal: bool = False) -> dict:
    """The simulator on exactly these requests (arrivals as released, lengths); METRICS plus TPOT P99 and
    TTFT P90 of the steady-state window's requests. `roundtrip_goal`: the what-if of `goal_roundtrip` (a
    prediction for a faster sync path, never compared with the measurement)."""
    from adrenaline_sgl.sim import metrics
    from adrenaline_sgl.sim.costs import get_costs
    from adrenaline_sgl.sim.engine import Simulator
    from adrenaline_sgl.sim.policy import get_policy
    from adrenaline_sgl.sim.records import DECODE
    from adrenaline_sgl.sim.workloads import Requests

    reqs = sorted(reqs, key=lambda r: r["rid"])
    stream = Requests(np.array([r["arrival_s"] for r in reqs], dtype=np.float64),
                      np.array([int(r["prompt_len"]) for r in reqs], dtype=np.int64),
                      np.array([int(r["output_len"]) for r in reqs], dtype=np.int64))  # fmt: skip
    costs = get_costs("scheduler", sim_cfg)
    if roundtrip_goal:
        costs._roundtrip_ms = goal_roundtrip(costs)
    result = Simulator(sim_cfg, stream, costs, get_policy("scheduler", sim_cfg, costs)).run()
    m = metrics.request_metrics(result.requests)
    window = metrics.steady_window(result.requests)
    inside = [r for r in result.requests if window[0] <= r.arrival_s <= window[1]]
    steps = [s for s in result.steps if s.kind == DECODE]
    return {"steady_throughput_tok_s": metrics.steady_throughput(result, window).decode_tok_s,
            "mean_tpot_ms": m.mean_tpot_ms, "mean_ttft_s": m.mean_ttft_s,
            "decode_batch_mean": float(np.mean([s.batch for s in steps])) if steps else math.nan,
            "p99_tpot_ms": m.p99_tpot_ms,
            "p90_ttft_s": float(np.percentile([r.first_token_s - r.arrival_s for r in inside], 90)),
            "offloaded_frac": m.offloaded_frac}  # fmt: skip


def saturated(row: dict, rate: float, output_len: int, ttft_slo_s: float) -> bool:
    """The module doc's rule (fixed before comparing)."""
    offered = rate * output_len
    return row["steady_throughput_tok_s"] < (1 - SATURATION_SHORTFALL) * offered or row["p90_ttft_s"] > ttft_slo_s


def knee(points: list[tuple[float, bool]]) -> float:
    """The lowest saturated rate (NaN when none is)."""
    rates = [r for r, sat in sorted(points) if sat]
    return rates[0] if rates else math.nan


def rel_err(pred: float, meas: float) -> float:
    return (pred - meas) / meas if meas and math.isfinite(meas) and math.isfinite(pred) else math.nan


def compare(out: Path, cfg: dict, whatif: list | None = None) -> tuple[list[list], list[list]]:
    """(sim_vs_real rows, summary rows) from the measured results in `out`; `whatif` (when given) gets one row
    per offloading point predicted with the round trip at item 5's goal (WHATIF_COLUMNS)."""
    whatif = [] if whatif is None else whatif
    e2e = common.read_csv(out / "e2e.csv")
    requests = common.read_csv(out / "requests.csv")
    if not e2e or not requests:
        raise common.ExperimentError(f"{out}: e2e.csv or requests.csv is empty; run `make reproduce-real-cpu` first")
    output_len = int(cfg["workload"]["output_len"])
    ttft_slo = float(cfg["ttft_slo_s"])
    rows, summary = [], []
    for system in [s for s in cfg["systems"] if any(r["system"] == s for r in e2e)]:
        info_path = out / f"server_info_{system}.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else None
        mine = sorted((r for r in e2e if r["system"] == system), key=lambda r: float(r["request_rate"]))
        max_running = max((float(r.get("decode_max_running") or "nan") for r in mine), default=math.nan)
        sim_cfg = sim_config(cfg, system, info, max_running)
        points = []
        for r in mine:
            rate = float(r["request_rate"])
            meas = {k: float(r[k]) for k in [*METRICS, "p99_tpot_ms", "p90_ttft_s"]}
            reqs = [{k: float(q[k]) if k != "rid" else int(q[k]) for k in ("rid", "arrival_s", "prompt_len",
                                                                            "output_len")}
                    for q in requests if q["system"] == system and float(q["request_rate"]) == rate]  # fmt: skip
            if not reqs:
                raise common.ExperimentError(f"requests.csv has no requests of {system} at {rate:g} req/s")
            pred = simulate_point(sim_cfg, reqs)
            points.append((rate, meas, pred))
            if system != "pd":
                goal = simulate_point(sim_cfg, reqs, roundtrip_goal=True)
                whatif.append([system, rate, goal["steady_throughput_tok_s"], goal["mean_tpot_ms"],
                               goal["p99_tpot_ms"], goal["decode_batch_mean"]])  # fmt: skip
        k_meas = knee([(rate, saturated(m, rate, output_len, ttft_slo)) for rate, m, _ in points])
        k_pred = knee([(rate, saturated(p, rate, output_len, ttft_slo)) for rate, _, p in points])
        rates = [rate for rate, _, _ in points]
        step = (abs(rates.index(k_pred) - rates.index(k_meas)) if k_pred in rates and k_meas in rates
                else 0 if math.isnan(k_pred) and math.isnan(k_meas) else math.nan)
        for rate, meas, pred in points:
            below = math.isnan(k_meas) or rate < k_meas
            row = [system, rate, int(below)]
            for metric in METRICS:
                row += [meas[metric], pred[metric], rel_err(pred[metric], meas[metric])]
            rows.append(row)
        for metric in METRICS:
            errs = [abs(rel_err(p[metric], m[metric])) for rate, m, p in points if math.isnan(k_meas) or rate < k_meas]
            errs = [e for e in errs if math.isfinite(e)]
            summary.append([system, metric, len(errs), float(np.median(errs)) if errs else math.nan,
                            max(errs) if errs else math.nan, k_meas, k_pred, step])
    return rows, summary


ROW_COLUMNS = ["system", "request_rate", "below_knee"] + [f"{m}_{w}" for m in METRICS
                                                          for w in ("measured", "predicted", "rel_err")]
WHATIF_COLUMNS = ["system", "request_rate", "steady_throughput_tok_s", "mean_tpot_ms", "p99_tpot_ms",
                  "decode_batch_mean"]
SUMMARY_COLUMNS = ["system", "metric", "points_below_knee", "median_abs_rel_err", "max_abs_rel_err",
                   "knee_measured", "knee_predicted", "knee_steps_apart"]


def markdown(rows: list[list], summary: list[list]) -> str:
    """The validation table for docs/simulator.md: every point, then the summary."""
    head = ("| system | rate (req/s) | below knee | throughput meas / pred (tok/s) | mean TPOT meas / pred (ms) | "
            "mean TTFT meas / pred (s) | decode batch meas / pred |")
    lines = [head, "|---|---:|:---:|---:|---:|---:|---:|"]
    for r in rows:
        d = dict(zip(ROW_COLUMNS, r))
        cells = []
        for m, fmt in zip(METRICS, ("{:.1f}", "{:.0f}", "{:.2f}", "{:.1f}")):
            err = d[f"{m}_rel_err"]
            cells.append(f"{fmt.format(d[f'{m}_measured'])} / {fmt.format(d[f'{m}_predicted'])} "
                         f"({err:+.0%})" if math.isfinite(err) else "n/a")
        lines.append(f"| {d['system']} | {d['request_rate']:g} | {'yes' if d['below_knee'] else 'no'} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| system | metric | points below knee | median abs rel err | max | knee measured / predicted "
              "(req/s) | steps apart |", "|---|---|---:|---:|---:|---|---:|"]
    for s in summary:
        d = dict(zip(SUMMARY_COLUMNS, s))
        lines.append(f"| {d['system']} | {d['metric']} | {d['points_below_knee']} | {d['median_abs_rel_err']:.1%} | "
                     f"{d['max_abs_rel_err']:.1%} | {d['knee_measured']:g} / {d['knee_predicted']:g} | "
                     f"{d['knee_steps_apart']} |")
    return "\n".join(lines) + "\n"


DOCS = common.REPO_ROOT / "docs" / "simulator.md"
BEGIN, END = "<!-- real-cpu-validation:begin -->", "<!-- real-cpu-validation:end -->"


def _provenance_line(out: Path) -> str:
    meta = common.read_csv(out / "meta.csv")[0] if (out / "meta.csv").exists() else {}
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text()) or {}
    return (f"Measured {resolved.get('date', '?')} on {meta.get('machine', '?')} at git "
            f"{resolved.get('git_sha', '?')}, load average at the start {resolved.get('load_avg_start', '?')} "
            "(per point: e2e.csv `load_avg`).")


def write_docs(table: str, provenance: str, path: Path = DOCS) -> Path:
    """Replace the block between the markers in docs/simulator.md (one-line error when they are missing)."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise common.ExperimentError(f"{path} has no {BEGIN} ... {END} block to write the table into")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{provenance}\n\n{table}{END}{tail}")
    return path


@common.guarded
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m experiments.real_cpu.compare", description=__doc__.splitlines()[0])
    ap.add_argument("--no-plot", action="store_true", help="write the CSVs only")
    ap.add_argument("--docs", action="store_true", help="also write the table into docs/simulator.md (between "
                                                          "its real-cpu-validation markers)")
    args = ap.parse_args(argv)
    out = common.results_dir(FIG)
    resolved = out / "config.resolved.yaml"
    if not resolved.exists():
        raise common.ExperimentError(f"no measured run in {out}: run `make reproduce-real-cpu` first")
    cfg = {**setup.load(), **{k: v for k, v in yaml.safe_load(resolved.read_text()).items()
                              if k in ("systems", "clusters", "workload", "tpot_slo_ms", "ttft_slo_s")}}
    whatif: list[list] = []
    rows, summary = compare(out, cfg, whatif)
    common.write_csv(out / "sim_vs_real.csv", ROW_COLUMNS, rows)
    common.write_csv(out / "whatif_roundtrip_goal.csv", WHATIF_COLUMNS, whatif)
    common.write_csv(out / "sim_vs_real_summary.csv", SUMMARY_COLUMNS, summary)
    (out / "validation.md").write_text(markdown(rows, summary))
    print(markdown(rows, summary))
    if args.docs:
        print(f"{FIG}: table written into {write_docs(markdown(rows, summary), _provenance_line(out))}")
    if not args.no_plot:
        print(f"{FIG}: wrote {common.load_plotter('sim_vs_real').plot(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

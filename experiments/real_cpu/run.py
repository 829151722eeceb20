"""Measured on CPU: stock PD, then Adrenaline, on the pinned capacity-capped pair (`make reproduce-real-cpu`).

For each system of config.yaml (its cluster YAML: both pinned, prefill + executor on CPU 0, decode on CPU 1,
decode's KV pool capped) the stack is started (`adrenaline_sgl.launch.start_cluster`), warmed with two
requests, and every rate of the sweep runs through `sglang.benchmark.serving` (experiments/real.py:
random-ids of exact lengths, ignore_eos, Poisson arrivals recorded as released) while `server_stats.Poller`
samples both servers. Every request of every point must complete with its exact output length, else the run
stops with one line. Then the stack stops and the next starts.

Writes into `$RESULTS_DIR/real_cpu/`:
- `e2e.csv`: figure 5's columns (E2E_COLUMNS), its detail columns that a client can measure (DETAIL_COLUMNS,
  the same definitions: adrenaline_sgl/sim/metrics.py) and the server-side ones (server_stats.SUMMARY_COLUMNS);
- `timeline.csv`: every server sample (decode running batch over time, offloaded, KV, queues, counters);
- `requests.csv`: every request as measured (arrival as released, first token, finish: seconds from the
  point's first arrival), what compare.py replays in the simulator;
- `summary.csv`: per system the highest rate it sustains within the SLOs and its throughput there, and its
  saturation throughput (the largest steady-state throughput over the sweep), with the Adrenaline / PD ratios;
- `meta.csv`, `config.resolved.yaml`, `bench/` (bench_serving's JSON lines and arrivals), `launch/` (logs),
  then `real_cpu.png` (plots/real_cpu.py, titled "measured on CPU").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from experiments import common, real

from . import server_stats, setup

FIG = "real_cpu"
E2E_COLUMNS = ["system", "model", "workload", "request_rate", "mean_ttft_s", "mean_tpot_ms", "p99_tpot_ms",
               "decode_throughput_tok_s"]  # fmt: skip  (figure 5's e2e.csv)
DETAIL_COLUMNS = ["p99_ttft_s", "p90_ttft_s", "offloaded_frac", "completed", "steady_throughput_tok_s",
                  "total_throughput_tok_s", "steady_total_throughput_tok_s", "num_requests", "wall_s",
                  "load_avg"]  # fmt: skip
COLUMNS = E2E_COLUMNS + DETAIL_COLUMNS + server_stats.SUMMARY_COLUMNS
REQUEST_COLUMNS = ["system", "request_rate", "rid", "arrival_s", "prompt_len", "output_len", "first_token_s",
                   "finish_s"]  # fmt: skip
SUMMARY_COLUMNS = ["system", "sustained_rate", "sustained_steady_throughput_tok_s", "sustained_p99_tpot_ms",
                   "saturation_rate", "saturation_steady_throughput_tok_s", "ratio_sustained", "ratio_saturation"]
ADMITTED_OFFLOADED = re.compile(r"adrenaline: admitted \S+ offloaded to")
WARMUP_REQUESTS = 2


def workload_name(cfg: dict) -> str:
    wl = cfg["workload"]
    return f"random-ids-{wl['input_len']}-{wl['output_len']}"


def point_row(cfg: dict, system: str, rate: float, point: real.BenchPoint, server: dict, offloaded: int,
              wall_s: float, load: str) -> list:
    """One e2e.csv row: the client's numbers from the per-request records (sim.metrics, as the simulator's),
    bench_serving's throughput, and the server-side summary."""
    from adrenaline_sgl.sim import metrics

    m = metrics.request_metrics(point.requests)
    window = metrics.steady_window(point.requests)
    inside = [r for r in point.requests if window[0] <= r.arrival_s <= window[1]]
    p90_ttft = float(np.percentile([r.first_token_s - r.arrival_s for r in inside], 90))
    steady = real.steady_client_throughput(point)
    prompts = sum(r.prompt_len for r in point.requests if window[0] <= r.first_token_s < window[1])
    n = len(point.requests)
    return [system, Path(real.model_path()).name, workload_name(cfg), float(rate), m.mean_ttft_s, m.mean_tpot_ms,
            m.p99_tpot_ms, point.summary["decode_throughput_tok_s"], m.p99_ttft_s, p90_ttft,
            offloaded / n if system == "adrenaline" else 0.0, point.summary["completed"], steady,
            point.summary["total_throughput_tok_s"], steady + prompts / (window[1] - window[0]), n, wall_s, load,
            *[server[c] for c in server_stats.SUMMARY_COLUMNS]]  # fmt: skip


def _log_count(path: Path) -> int:
    try:
        return len(ADMITTED_OFFLOADED.findall(path.read_text(errors="replace")))
    except OSError:
        return 0


def _warm_up(url: str, cfg: dict) -> None:
    """Two requests of the workload's lengths, not measured: the first point must not pay first-use costs."""
    from .calibrate import _generate, _ids

    wl = cfg["workload"]
    threads = [threading.Thread(target=_generate, args=(url, _ids(wl["input_len"], 99 + i), wl["output_len"], 600.0))
               for i in range(WARMUP_REQUESTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_system(cfg: dict, system: str, out: Path) -> tuple[list, list, list]:
    """Start the system's stack, run every rate, stop it. Returns (e2e rows, timeline rows, request rows)."""
    from adrenaline_sgl.launch import start_cluster

    wl = cfg["workload"]
    rows, timeline, requests = [], [], []
    bench_dir = out / "bench"
    bench_dir.mkdir(exist_ok=True)
    with start_cluster(setup.cluster_config(cfg, system, out / "launch")) as running:
        urls = setup.urls(running)
        decode_log = running.folder / "decode-0.log"
        print(f"{FIG}: {system} stack up ({running.record.get('all_healthy_s')} s), warming up", flush=True)
        info = {role: server_stats.get_json(f"{urls[role]}/server_info") for role in ("prefill", "decode")}
        (out / f"server_info_{system}.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
        _warm_up(urls["proxy"], cfg)
        for rate in cfg["request_rates"]:
            n = setup.num_requests(cfg, rate)
            stem = bench_dir / f"{system}_{rate:g}"
            jsonl, arrivals = stem.with_suffix(".jsonl"), Path(f"{stem}.arrivals.json")
            jsonl.unlink(missing_ok=True)
            cmd = real.fixed_bench_command(urls["proxy"], wl["input_len"], wl["output_len"], float(rate), n,
                                           int(cfg["seed"]), jsonl, arrivals)
            cmd.insert(cmd.index("--output-details"), "--warmup-requests")
            cmd.insert(cmd.index("--output-details"), "0")
            load, before = setup.load_avg(), _log_count(decode_log)
            t0 = time.monotonic()
            poller = server_stats.Poller(urls["prefill"], urls["decode"], system == "adrenaline",
                                         float(cfg["poll_interval_s"])).start()
            try:
                real.run_bench(cmd, jsonl)
            finally:
                samples = poller.stop()
            wall = time.monotonic() - t0
            line = [ln for ln in jsonl.read_text().splitlines() if ln.strip()][-1]
            point = real.parse_bench_details(line, real.read_arrivals(arrivals), wl["input_len"], wl["output_len"])
            offloaded = _log_count(decode_log) - before
            row = point_row(cfg, system, rate, point, server_stats.summarize(samples), offloaded, wall, load)
            rows.append(row)
            timeline += [[system, float(rate), *server_stats.sample_row(s)] for s in samples]
            requests += [[system, float(rate), r.rid, r.arrival_s, r.prompt_len, r.output_len, r.first_token_s,
                          r.finish_s] for r in point.requests]  # fmt: skip
            d = dict(zip(COLUMNS, row))
            print(f"{FIG}: {system} {rate:g} req/s x {n}: TTFT {d['mean_ttft_s']:.2f} s, TPOT "
                  f"{d['mean_tpot_ms']:.0f} ms (p99 {d['p99_tpot_ms']:.0f}), steady {d['steady_throughput_tok_s']:.1f} "
                  f"tok/s, decode batch {d['decode_batch_mean']:.1f} (offloaded {d['decode_offloaded_mean']:.1f}), "
                  f"{wall:.0f} s, load {load.split()[0]}", flush=True)
    return rows, timeline, requests


def sustained(rows: list[dict], tpot_slo_ms: float, ttft_slo_s: float) -> dict | None:
    """The highest-rate point within both SLOs (P99 TPOT, P90 TTFT of the steady-state window's requests
    over the whole point: the same criterion as experiments/sim_runs.sustainable), None if none is."""
    ok = [r for r in rows if r["p99_tpot_ms"] <= tpot_slo_ms and r["p90_ttft_s"] <= ttft_slo_s]
    return max(ok, key=lambda r: r["request_rate"]) if ok else None


def summary_rows(e2e: list[dict], cfg: dict) -> list[list]:
    """summary.csv: per system its sustained and saturation points, and Adrenaline / PD ratios of both. A
    system with no point of the sweep within the SLOs delivers 0 tokens/s within them (its sustained rate is
    NaN, its sustained throughput 0, so its ratio is 0 when the baseline sustains a point)."""
    out, best = [], {}
    for system in cfg["systems"]:
        rows = [r for r in e2e if r["system"] == system]
        if not rows:  # not measured (yet)
            continue
        sus = sustained(rows, float(cfg["tpot_slo_ms"]), float(cfg["ttft_slo_s"]))
        sat = max(rows, key=lambda r: r["steady_throughput_tok_s"])
        best[system] = (sus["steady_throughput_tok_s"] if sus else 0.0, sat["steady_throughput_tok_s"])
        out.append([system, sus["request_rate"] if sus else math.nan, best[system][0],
                    sus["p99_tpot_ms"] if sus else math.nan, sat["request_rate"], best[system][1]])
    base = best.get("pd")
    for row in out:
        ratio = ((row[2] / base[0] if base[0] > 0 else math.nan, row[5] / base[1]) if base and row[0] != "pd"
                 else (math.nan, math.nan))  # fmt: skip
        row += list(ratio)
    return out


def write_all(out: Path, cfg: dict, rows: list, timeline: list, requests: list) -> None:
    common.write_csv(out / "e2e.csv", COLUMNS, rows)
    common.write_csv(out / "timeline.csv", ["system", "request_rate", *server_stats.SAMPLE_COLUMNS], timeline)
    common.write_csv(out / "requests.csv", REQUEST_COLUMNS, requests, digits=12)
    e2e = [dict(zip(COLUMNS, r)) for r in rows]
    common.write_csv(out / "summary.csv", SUMMARY_COLUMNS, summary_rows(e2e, cfg))


@common.guarded
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m experiments.real_cpu.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two rates, a few requests each: a pipeline check")
    ap.add_argument("--systems", help="comma-separated subset of the config's systems (pd,adrenaline)")
    ap.add_argument("--rates", help="comma-separated request rates (req/s) instead of the config's")
    ap.add_argument("--no-plot", action="store_true", help="write the CSVs only")
    args = ap.parse_args(argv)
    cfg = setup.load(quick=args.quick)
    if args.systems:
        cfg["systems"] = [s.strip() for s in args.systems.split(",")]
    if args.rates:
        try:
            cfg["request_rates"] = [float(x) for x in args.rates.split(",")]
        except ValueError:
            raise common.ExperimentError(f"--rates={args.rates!r} must be comma-separated numbers") from None
    setup.check(cfg)
    out = common.results_dir(FIG)
    os.environ["ADRENALINE_MODEL_PATH"] = setup.model_dir(cfg)  # the benchmark's tokenizer (experiments/real.py)
    prov = setup.provenance("experiments.real_cpu.run", argv)
    (out / "config.resolved.yaml").write_text(yaml.safe_dump({"mode": "real", **prov, **cfg}, sort_keys=False))
    common.write_meta(out, "real", machine=prov["machine"], setup="1P1D pinned (prefill+executor CPU 0, decode CPU 1)",
                      load_avg_start=prov["load_avg_start"], git_sha=prov["git_sha"])  # fmt: skip
    t0 = time.monotonic()
    rows, timeline, requests = [], [], []
    for system in cfg["systems"]:
        r, t, q = run_system(cfg, system, out)
        rows += r
        timeline += t
        requests += q
        write_all(out, cfg, rows, timeline, requests)  # what is measured so far survives a later failure
    print(f"{FIG}: both stacks measured in {time.monotonic() - t0:.0f} s (load now {setup.load_avg()})")
    return common.finish(FIG, out, args.no_plot)


if __name__ == "__main__":
    sys.exit(main())

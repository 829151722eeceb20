"""Simulator vs emulator on figure 5's setting: the same request streams through both, side by side.

For every system (PD, Adrenaline) and point (rate, requests) of config.yaml, the simulator runs each of its
variants (`sim_variants`: figure 5's, with SGLang's watermark decode admission, and the older reserve-max rule) and
the emulator runs the same stream through real SGLang servers with an emulated GPU
(experiments/emulated.py). Writes to `$RESULTS_DIR/sim_vs_emu/`:
- `compare.csv`: per (system, rate, source) mean/P99 TTFT, mean/P99 TPOT, decode throughput, mean and
  largest decode batch, largest decode and prefill KV use (tokens), completed requests;
- `timeline.csv`: per emulated second, decode batch, decode and prefill KV in use, queue lengths;
- `overheads.csv`: the emulator's per-step CPU time and unhidden overhead (experiments/emulated.py);
- `probe.csv` (`--probe`): PD's TTFT at two clock scales, and the split TTFT(k) = S + C / k;
- `sim_vs_emu.png` (plots/sim_vs_emu.py).

    python -m experiments.sim_vs_emu.run [--quick] [--probe] [--with-fig5 DIR] [--no-plot]

Holds real servers: run under `flock /tmp/heavy.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from adrenaline_sgl.sim import metrics
from adrenaline_sgl.sim.records import DECODE, PREFILL

from .. import common, emulated, sim_runs

HERE = Path(__file__).resolve().parent
NAME = "sim_vs_emu"
COMPARE_COLUMNS = ["system", "request_rate", "num_requests", "source", "mean_ttft_s", "p99_ttft_s", "mean_tpot_ms",
                   "p99_tpot_ms", "decode_throughput_tok_s", "mean_decode_batch", "max_decode_batch",
                   "max_decode_kv_tokens", "max_prefill_kv_tokens", "completed"]  # fmt: skip
PROBE_COLUMNS = ["clock_scale", "request_rate", "num_requests", "mean_ttft_s", "mean_tpot_ms", "completed",
                 "before_prefill_ms", "prefill_ms", "after_prefill_ms",
                 "fit_sglang_ttft_s", "fit_cpu_ttft_s"]  # fmt: skip


def _summary(system, rate, n, source, m: metrics.RequestMetrics, timeline: list[list]) -> list:
    """One compare.csv row: the requests' metrics, and decode batch and KV use from the 1-s timeline bins
    (the same binning for both tools: mean and largest bin-mean batch, largest KV in use at a bin's end)."""
    batches = [r[4] for r in timeline if r[4] > 0]
    dec_kv = [r[5] for r in timeline if not math.isnan(r[5])]
    pre_kv = [r[6] for r in timeline if not math.isnan(r[6])]
    return [system, rate, n, source, m.mean_ttft_s, m.p99_ttft_s, m.mean_tpot_ms, m.p99_tpot_ms,
            m.decode_throughput_tok_s, float(np.mean(batches)) if batches else math.nan, max(batches, default=0),
            max(dec_kv, default=0), max(pre_kv, default=0), m.completed]  # fmt: skip


def _sim(cfg: dict, variant: str, overrides: dict, system: str, rate: float, n: int) -> tuple[list, list]:
    pt = sim_runs.run_point({**cfg, **overrides}, cfg["model"], sim_runs.policy_of(system), cfg["workload"], rate, n)
    res = pt.result
    dec_steps = [s for s in res.steps if s.kind == DECODE]
    dec_mem = [m for m in res.mem if m.kind == DECODE]
    pre_mem = [m for m in res.mem if m.kind == PREFILL]
    tl = _sim_timeline(system, rate, variant, dec_steps, dec_mem, pre_mem)
    return _summary(system, rate, n, variant, pt.req, tl), tl


def _sim_timeline(system, rate, variant, dec_steps, dec_mem, pre_mem, bin_s: float = emulated.TIMELINE_BIN_S):
    end = max([s.end_s for s in dec_steps] + [0.0])
    rows = []
    for b in range(int(end // bin_s) + 1):
        lo, hi = b * bin_s, (b + 1) * bin_s
        d = [s.batch for s in dec_steps if lo <= s.end_s < hi]
        dm = [m.kv_used_tokens for m in dec_mem if m.t_s < hi]
        pm = [m.kv_used_tokens for m in pre_mem if m.t_s < hi]
        rows.append([system, rate, variant, lo, float(np.mean(d)) if d else 0.0, dm[-1] if dm else math.nan,
                     pm[-1] if pm else math.nan, math.nan, math.nan])  # fmt: skip
    return rows


def _emulated(cfg: dict, system: str, points: list[dict], out: Path) -> tuple[list, list, list]:
    rows, timeline, overheads = [], [], []
    by_n: dict[int, list[float]] = {}
    for p in points:  # one stack per system; the points run in turn (grouped by request count)
        by_n.setdefault(int(p["num_requests"]), []).append(float(p["rate"]))
    results = []
    for n, rates in by_n.items():
        results += [(n, pt) for pt in emulated.run_system(cfg, system, cfg["workload"], rates, n, out)]
    for n, pt in results:
        tl = emulated.timeline(pt)
        rows.append(_summary(system, pt.rate, n, "emulated", metrics.request_metrics(pt.records), tl))
        timeline += tl
        overheads += emulated.overheads(pt)
        if pt.failures:
            print(f"{NAME}: {system} @ {pt.rate:g}: {len(pt.failures)} failed, e.g. {pt.failures[:2]}", flush=True)
    return rows, timeline, overheads


def _from_fig5(folder: Path) -> tuple[list[dict], list, list, list]:
    """A finished `MODE=emulated` figure 5 (its requests.csv, timeline.csv, overheads.csv): its points, and
    compare rows, timeline and overheads for them, so its runs need not be repeated here."""
    import yaml

    from adrenaline_sgl.sim.records import RequestRecord

    resolved = yaml.safe_load((folder / "config.resolved.yaml").read_text())
    if resolved.get("mode") != "emulated":
        raise common.ExperimentError(f"{folder} is not a MODE=emulated figure 5 (mode {resolved.get('mode')!r})")
    n = int(resolved["num_requests"])
    reqs, tl = common.read_csv(folder / "requests.csv"), common.read_csv(folder / "timeline.csv")
    numeric = emulated.TIMELINE_COLUMNS[3:]
    timeline = [[r["system"], float(r["request_rate"]), r["source"], *[float(r[c]) for c in numeric]] for r in tl]
    rows, points = [], []
    for system, rate in sorted({(r["system"], float(r["request_rate"])) for r in reqs}):
        recs = [RequestRecord(int(r["rid"]), float(r["arrival_s"]), int(r["prompt_len"]), int(r["output_len"]),
                              first_token_s=float(r["first_token_s"]), finish_s=float(r["finish_s"]),
                              tokens_out=int(r["tokens_out"]))
                for r in reqs if r["system"] == system and float(r["request_rate"]) == rate]  # fmt: skip
        mine = [t for t in timeline if t[0] == system and t[1] == rate]
        rows.append(_summary(system, rate, n, "emulated", metrics.request_metrics(recs), mine))
        points.append({"system": system, "rate": rate, "num_requests": n})
    overheads = [[r[c] for c in emulated.OVERHEAD_COLUMNS] for r in common.read_csv(folder / "overheads.csv")]
    return points, rows, timeline, overheads


def _probe(cfg: dict, probe: dict, out: Path) -> list:
    """PD at low load at two clock scales: TTFT(k) = S + C / k gives SGLang's own latency S (emulated time,
    scales with k) and this machine's CPU/IPC latency C (wall time, shrinks with k)."""
    rows = []
    for k in probe["clock_scales"]:
        c = {**cfg, "emulated": {"clock_scale": float(k)}}
        (pt,) = emulated.run_system(c, "pd", cfg["workload"], [float(probe["rate"])], int(probe["num_requests"]),
                                    out / f"probe-k{k:g}")
        m = metrics.request_metrics(pt.records)
        rows.append([float(k), float(probe["rate"]), int(probe["num_requests"]), m.mean_ttft_s, m.mean_tpot_ms,
                     m.completed, *ttft_segments_ms(pt), math.nan, math.nan])  # fmt: skip
    (k1, t1), (k2, t2) = [(r[0], r[3]) for r in rows[:2]]
    c_s = (t1 - t2) / (1 / k1 - 1 / k2)
    for r in rows:
        r[9], r[10] = t1 - c_s / k1, c_s
    return rows


def ttft_segments_ms(pt: emulated.EmulatedPoint) -> tuple[float, float, float]:
    """Mean TTFT split at the prefill step (emulated ms): arrival -> prefill launched, the prefill step, prefill
    done -> first token at the client. At low load each request has a prefill batch of its own, so the k-th
    single-request prefill step after the run's start is the k-th request's (requests sharing a batch or
    prefilled in chunks are left out)."""
    steps = sorted((r for r in pt.steps.get("prefill", []) if r["kind"] == "prefill"), key=lambda r: r["launch_s"])
    recs = sorted((r for r in pt.records if math.isfinite(r.finish_s)), key=lambda r: r.arrival_s)
    if len(steps) != len(recs) or any(s["batch"] != 1 for s in steps):
        return math.nan, math.nan, math.nan
    before = [s["launch_s"] - r.arrival_s for s, r in zip(steps, recs)]
    run = [s["done_s"] - s["launch_s"] for s in steps]
    after = [r.first_token_s - s["done_s"] for s, r in zip(steps, recs)]
    return tuple(float(np.mean(x)) * 1e3 for x in (before, run, after))


@common.guarded
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.sim_vs_emu.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small version (config.yaml `quick:`)")
    ap.add_argument("--probe", action="store_true", help="also split TTFT into SGLang's and this machine's part")
    ap.add_argument("--no-emulator", action="store_true", help="simulator only (no servers; for tests)")
    ap.add_argument("--with-fig5", metavar="DIR", help="also compare a finished MODE=emulated figure 5 folder "
                                                       "(its points are not rerun)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    cfg = common.load_config(HERE)
    quick = cfg.pop("quick", {}) or {}
    if args.quick:
        cfg.update(quick)
    out = common.results_dir(NAME)
    common.write_resolved(out, cfg, "emulated")
    rows, timeline, overheads = [], [], []
    for system in cfg["systems"]:
        for p in cfg["points"]:
            for variant, overrides in cfg["sim_variants"].items():
                row, tl = _sim(cfg, variant, overrides or {}, system, float(p["rate"]), int(p["num_requests"]))
                rows.append(row)
                timeline += tl
        if not args.no_emulator:
            r, tl, oh = _emulated(cfg, system, cfg["points"], out)
            rows, timeline, overheads = rows + r, timeline + tl, overheads + oh
    if args.with_fig5:
        points, r, tl, oh = _from_fig5(Path(args.with_fig5))
        done = {(row[0], row[1], row[2], row[3]) for row in rows}
        for p in points:
            for variant, overrides in cfg["sim_variants"].items():
                if (p["system"], p["rate"], p["num_requests"], variant) in done:
                    continue
                row, stl = _sim(cfg, variant, overrides or {}, p["system"], p["rate"], p["num_requests"])
                rows, timeline = rows + [row], timeline + stl
        rows, timeline, overheads = rows + r, timeline + tl, overheads + oh
    rows.sort(key=lambda r: (r[0] != "pd", r[1], r[2], r[3]))
    common.write_csv(out / "compare.csv", COMPARE_COLUMNS, rows)
    common.write_csv(out / "timeline.csv", emulated.TIMELINE_COLUMNS, timeline)
    common.write_csv(out / "overheads.csv", emulated.OVERHEAD_COLUMNS, overheads)
    if args.probe and not args.no_emulator:
        common.write_csv(out / "probe.csv", PROBE_COLUMNS, _probe(cfg, cfg["probe"], out))
    return common.finish(NAME, out, args.no_plot)


if __name__ == "__main__":
    sys.exit(main())

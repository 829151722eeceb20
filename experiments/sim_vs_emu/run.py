"""Simulator vs emulator on figure 5's setting: the same request streams through both, side by side.

For every system (PD, Adrenaline) and point (rate, requests) of config.yaml, the simulator runs each of its
variants (`sim_variants`: figure 5's reserve-max decode admission, and its SGLang-like watermark rule) and
the emulator runs the same stream through real SGLang servers with an emulated GPU
(experiments/emulated.py). Writes to `$RESULTS_DIR/sim_vs_emu/`:
- `compare.csv`: per (system, rate, source) mean/P99 TTFT, mean/P99 TPOT, decode throughput, mean and
  largest decode batch, largest decode and prefill KV use (tokens), completed requests;
- `timeline.csv`: per emulated second, decode batch, decode and prefill KV in use, queue lengths;
- `overheads.csv`: the emulator's per-step CPU time and unhidden overhead (experiments/emulated.py);
- `probe.csv` (`--probe`): PD's TTFT at two clock scales, and the split TTFT(k) = S + C / k;
- `sim_vs_emu.png` (plots/sim_vs_emu.py).

    python -m experiments.sim_vs_emu.run [--quick] [--probe] [--no-plot]      # ~35 min (--quick ~6 min)

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
                 "fit_sglang_ttft_s", "fit_cpu_ttft_s"]  # fmt: skip


def _summary(system, rate, n, source, req_metrics, batches, dec_kv, pre_kv) -> list:
    m = req_metrics
    return [system, rate, n, source, m.mean_ttft_s, m.p99_ttft_s, m.mean_tpot_ms, m.p99_tpot_ms,
            m.decode_throughput_tok_s, float(np.mean(batches)) if len(batches) else math.nan,
            max(batches, default=0), max(dec_kv, default=0), max(pre_kv, default=0), m.completed]  # fmt: skip


def _sim(cfg: dict, variant: str, overrides: dict, system: str, rate: float, n: int) -> tuple[list, list]:
    pt = sim_runs.run_point({**cfg, **overrides}, cfg["model"], system, cfg["workload"], rate, n)
    res = pt.result
    dec_steps = [s for s in res.steps if s.kind == DECODE]
    dec_mem = [m for m in res.mem if m.kind == DECODE]
    pre_mem = [m for m in res.mem if m.kind == PREFILL]
    row = _summary(system, rate, n, variant, pt.req, [s.batch for s in dec_steps],
                   [m.kv_used_tokens for m in dec_mem], [m.kv_used_tokens for m in pre_mem])
    return row, _sim_timeline(system, rate, variant, dec_steps, dec_mem, pre_mem)


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
        dec = [r for r in pt.steps.get("decode", []) if r["kind"] == "decode"]
        pre = pt.steps.get("prefill", [])
        m = metrics.request_metrics(pt.records)
        rows.append(_summary(system, pt.rate, n, "emulated", m, [r["batch"] for r in dec],
                             [emulated._used(r) for r in dec], [emulated._used(r) for r in pre]))
        timeline += emulated.timeline(pt)
        overheads += emulated.overheads(pt)
        if pt.failures:
            print(f"{NAME}: {system} @ {pt.rate:g}: {len(pt.failures)} failed, e.g. {pt.failures[:2]}", flush=True)
    return rows, timeline, overheads


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
                     m.completed, math.nan, math.nan])  # fmt: skip
    (k1, t1), (k2, t2) = [(r[0], r[3]) for r in rows[:2]]
    c_s = (t1 - t2) / (1 / k1 - 1 / k2)
    for r in rows:
        r[6], r[7] = t1 - c_s / k1, c_s
    return rows


@common.guarded
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.sim_vs_emu.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small version (config.yaml `quick:`)")
    ap.add_argument("--probe", action="store_true", help="also split TTFT into SGLang's and this machine's part")
    ap.add_argument("--no-emulator", action="store_true", help="simulator only (no servers; for tests)")
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
    rows.sort(key=lambda r: (r[0] != "pd", r[1], r[3]))
    common.write_csv(out / "compare.csv", COMPARE_COLUMNS, rows)
    common.write_csv(out / "timeline.csv", emulated.TIMELINE_COLUMNS, timeline)
    common.write_csv(out / "overheads.csv", emulated.OVERHEAD_COLUMNS, overheads)
    if args.probe and not args.no_emulator:
        common.write_csv(out / "probe.csv", PROBE_COLUMNS, _probe(cfg, cfg["probe"], out))
    return common.finish(NAME, out, args.no_plot)


if __name__ == "__main__":
    sys.exit(main())

"""The emulator on the real CPU experiment: the same stacks and request streams, GPU work from a CPU profile.

Issue 16's third check. The real CPU experiment (issue 14, `experiments/real_cpu/`) measures stock PD and
Adrenaline on a pinned, capacity-capped SmolLM2-135M pair. This runs its sweep again through the emulator:
the real experiment's own cluster YAMLs (servers, pins, pools, decode reserve, executor block, proxy), with
an `emulate:` block configured as `experiments/real_cpu/compare.py` configures the simulator for the same
run (`sim_config`): the CPU profiles instead of a GPU's (`scheduler/profiles/<device>.device.json` and its
table CSV; decode on `cpu-epyc-1core-sgl`, prefill and its executor on `cpu-epyc-1core-sgl-exec`) and
`executor_colocation: timeshare` (the executor shares prefill's one core), and every point's recorded
arrivals and exact lengths (the real folder's `requests.csv`) sent by the emulator's client. Both sides'
metrics come from per-request timestamps through `sim.metrics`, so the comparison does not depend on
bench_serving's definitions. Writes `$RESULTS_DIR/emulate_real_cpu/`: `compare.csv` (per system and rate:
real and emulated TTFT, TPOT, throughput and their relative errors; the decode step beside the real
servers' own counters from the real folder's `e2e.csv`: mean step, batch and offloaded rows, and the
emulated step's modelled parts), `requests.csv`, `overheads.csv` (experiments/emulated.py) and prints the
median absolute error on throughput and TPOT per system.

    python -m experiments.emulate_real_cpu --real RESULTS/real_cpu [--configs-root DIR] [--systems pd,adrenaline]

`--configs-root`: the checkout holding the YAMLs the real folder names (default this repo). Holds real
servers: run it under `flock /tmp/heavy.lock` on a shared machine. What the emulator does not reproduce on
CPU (docs/emulator.md, "Emulating the real CPU experiment"): the prefill batch's own slowdown by the
executor's work on the shared core (the simulator's approximation too), and SGLang's CPU work that a real
core serializes with the forward but the emulated step hides under overlap scheduling.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from adrenaline_sgl.sim import metrics
from adrenaline_sgl.sim.records import RequestRecord

from . import common, emulated

NAME = "emulate_real_cpu"
COMPARE_COLUMNS = ["system", "request_rate", "requests", "real_completed", "emulated_completed",
                   "real_mean_ttft_s", "emulated_mean_ttft_s", "real_mean_tpot_ms", "emulated_mean_tpot_ms",
                   "tpot_rel_err", "real_throughput_tok_s", "emulated_throughput_tok_s", "throughput_rel_err",
                   "emulated_mean_decode_batch", "emulated_bubble_share",
                   # the decode step: the real servers' counters (e2e.csv) beside the emulated steps' means
                   "real_decode_step_ms", "emulated_decode_step_ms", "real_decode_batch_mean",
                   "real_decode_offloaded_mean", "emulated_decode_offloaded_mean", "emulated_nonattn_ms",
                   "emulated_local_attn_ms", "emulated_remote_ms", "emulated_roundtrip_ms"]  # fmt: skip
STEP_PARTS = ("model_ms", "nonattn_ms", "local_attn_ms", "remote_ms", "roundtrip_ms")
MODEL = "smollm2-135m"
DECODE_DEVICE, PREFILL_DEVICE = "cpu-epyc-1core-sgl", "cpu-epyc-1core-sgl-exec"  # compare.py's (sim_config)
COLOCATION = "timeshare"  # compare.py's sim_config: one core hosts prefill and the executor
POOL_FLAG = "--max-total-tokens"


def _take_flag(args: tuple[str, ...], flag: str) -> tuple[tuple[str, ...], int | None]:
    """`args` without `flag VALUE` (or `flag=VALUE`), and VALUE as an int (None when absent)."""
    out, value, skip = [], None, False
    for i, a in enumerate(args):
        if skip:
            skip = False
        elif a == flag:
            value, skip = int(args[i + 1]), True
        elif a.startswith(flag + "="):
            value = int(a.split("=", 1)[1])
        else:
            out.append(a)
    return tuple(out), value


def emulated_cluster(cl, device: str, profile: str, run_dir: Path, prefill_device: str | None = None,
                     prefill_profile: str | None = None, colocation: str = COLOCATION):
    """The real experiment's ClusterConfig with an `emulate:` block for `device` (decode) and `prefill_device`
    (prefill and its executor; None: `device`): its pools move from the roles' `--max-total-tokens` into the
    block (the emulator sets that flag), everything else is kept."""
    from adrenaline_sgl.emulate.config import EmulateConfig

    pre_args, pre_pool = _take_flag(cl.prefill.extra_args, POOL_FLAG)
    dec_args, dec_pool = _take_flag(cl.decode.extra_args, POOL_FLAG)
    if dec_pool is None:
        raise common.ExperimentError(f"the real decode server has no {POOL_FLAG}: nothing says what pool to emulate")
    emu = EmulateConfig(gpu=device, prefill_gpu=prefill_device, model=MODEL, predictor="table", profile=profile,
                        prefill_profile=prefill_profile, executor_colocation=colocation, max_total_tokens=dec_pool,
                        prefill_max_total_tokens=pre_pool, clock_scale=1.0)
    return dataclasses.replace(cl, emulate=emu, run_dir=str(run_dir),
                               prefill=dataclasses.replace(cl.prefill, extra_args=pre_args),
                               decode=dataclasses.replace(cl.decode, extra_args=dec_args))


def real_points(folder: Path) -> dict[tuple[str, float], list[RequestRecord]]:
    """(system, rate) -> the real run's per-request records (recorded arrivals, exact lengths)."""
    points: dict[tuple[str, float], list[RequestRecord]] = {}
    for r in common.read_csv(folder / "requests.csv"):
        rec = RequestRecord(int(r["rid"]), float(r["arrival_s"]), int(r["prompt_len"]), int(r["output_len"]))
        rec.first_token_s, rec.finish_s = float(r["first_token_s"]), float(r["finish_s"])
        rec.tokens_out = int(r.get("tokens_out") or r["output_len"]) if math.isfinite(rec.finish_s) else 0
        points.setdefault((r["system"], float(r["request_rate"])), []).append(rec)
    return points


def _rel(a: float, b: float) -> float:
    return (a - b) / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def real_server_stats(folder: Path) -> dict[tuple[str, float], dict]:
    """(system, rate) -> the real run's server-side row of e2e.csv (empty when the folder has none)."""
    path = folder / "e2e.csv"
    return {(r["system"], float(r["request_rate"])): r for r in common.read_csv(path)} if path.is_file() else {}


def decode_parts(steps: list[dict]) -> dict[str, float]:
    """Means over the emulated decode steps: batch, offloaded rows and each modelled part (ms)."""
    dec = [s for s in steps if s["kind"] == "decode"]
    out = {c: float(np.mean([s.get(c, math.nan) for s in dec])) if dec else math.nan for c in STEP_PARTS}
    out["batch"] = float(np.mean([s["batch"] for s in dec])) if dec else math.nan
    out["offloaded"] = float(np.mean([s["offloaded"] for s in dec])) if dec else math.nan
    return out


def _num(row: dict, col: str) -> float:
    try:
        return float(row[col])
    except (KeyError, TypeError, ValueError):
        return math.nan


def run_system(cl, system: str, points: dict, out: Path, progress=print, real_stats: dict | None = None):
    """One emulated stack for `system`; every rate of the real run in turn. Rows of compare.csv, requests."""
    from adrenaline_sgl import launch
    from adrenaline_sgl.emulate import client

    vocab = emulated._vocab_size(cl)
    rows, requests, overheads = [], [], []
    with launch.start_cluster(cl) as running:
        trace_dir = Path(running.folder) / "emulate"
        progress(f"{NAME} {system}: stack ready in {running.record['all_healthy_s']} s ({running.folder})")
        for (sys_name, rate), real in sorted(points.items()):
            if sys_name != system:
                continue
            specs = [client.RequestSpec(f"{system}-{rate:g}-{r.rid}", r.arrival_s, r.prompt_len, r.output_len)
                     for r in real]  # fmt: skip
            wall0 = time.monotonic()
            t0, results = client.run(running.proxy_url, specs, vocab, 1.0, emulated.REQUEST_TIMEOUT_S)
            time.sleep(0.5)
            pt = emulated._point(system, rate, results, emulated._traces(trace_dir, t0, 1.0, time.monotonic()), 1.0)
            progress(f"{NAME} {system} @ {rate:g} req/s: {pt.completed}/{len(specs)} completed in "
                     f"{time.monotonic() - wall0:.0f} s" + (f"; failed: {pt.failures[:2]}" if pt.failures else ""))
            m_real, m_emu = metrics.request_metrics(real), metrics.request_metrics(pt.records)
            parts = decode_parts(pt.steps.get("decode", []))
            srv = (real_stats or {}).get((system, rate), {})
            oh = emulated.overheads(pt)
            bubble = next((o[8] for o in oh if o[2] == "decode"), math.nan)
            rows.append([system, rate, len(real), m_real.completed, m_emu.completed, m_real.mean_ttft_s,
                         m_emu.mean_ttft_s, m_real.mean_tpot_ms, m_emu.mean_tpot_ms,
                         _rel(m_emu.mean_tpot_ms, m_real.mean_tpot_ms), m_real.decode_throughput_tok_s,
                         m_emu.decode_throughput_tok_s,
                         _rel(m_emu.decode_throughput_tok_s, m_real.decode_throughput_tok_s),
                         parts["batch"], bubble, _num(srv, "decode_step_ms_mean"), parts["model_ms"],
                         _num(srv, "decode_batch_mean"), _num(srv, "decode_offloaded_mean"), parts["offloaded"],
                         parts["nonattn_ms"], parts["local_attn_ms"], parts["remote_ms"],
                         parts["roundtrip_ms"]])  # fmt: skip
            requests += [[system, rate, r.rid, r.arrival_s, r.prompt_len, r.output_len, r.first_token_s, r.finish_s]
                         for r in pt.records]  # fmt: skip
            overheads += oh
    return rows, requests, overheads


def median_errors(rows: list[list]) -> dict[str, tuple[float, float]]:
    """system -> (median |throughput error|, median |TPOT error|) over its rates."""
    out = {}
    for system in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == system]
        thr = [abs(r[12]) for r in mine if math.isfinite(r[12])]
        tpot = [abs(r[9]) for r in mine if math.isfinite(r[9])]
        out[system] = (float(np.median(thr)) if thr else math.nan, float(np.median(tpot)) if tpot else math.nan)
    return out


@common.guarded
def main(argv: list[str] | None = None) -> int:
    from adrenaline_sgl.configs import cluster

    ap = argparse.ArgumentParser(prog="python -m experiments.emulate_real_cpu", description=__doc__.splitlines()[0])
    ap.add_argument("--real", required=True, help="a finished real_cpu results folder (requests.csv, "
                                                   "config.resolved.yaml)")
    ap.add_argument("--configs-root", default=str(common.REPO_ROOT), help="checkout holding the cluster YAMLs "
                                                                           "the real folder names")
    ap.add_argument("--device", default=DECODE_DEVICE, help="decode's CPU profile device name "
                                                            "(scheduler/profiles/<device>.device.json)")
    ap.add_argument("--profile", help="its table CSV (default scheduler/profiles/<device>__smollm2-135m.csv)")
    ap.add_argument("--prefill-device", default=PREFILL_DEVICE, help="prefill's (and its executor's) profile "
                                                                     "device name")
    ap.add_argument("--prefill-profile", help="its table CSV (default scheduler/profiles/<device>__smollm2-135m.csv)")
    ap.add_argument("--colocation", default=COLOCATION, choices=("partition", "timeshare"),
                    help="emulate.executor_colocation (compare.py's simulator: timeshare)")
    ap.add_argument("--systems", default="pd,adrenaline", help="comma-separated systems of the real run")
    args = ap.parse_args(argv)
    from adrenaline_sgl.scheduler.specs import MEASURED_DEVICES_DIR

    folder = Path(args.real)
    if not (folder / "requests.csv").is_file():
        raise common.ExperimentError(f"{folder} has no requests.csv (a finished real_cpu run)")
    resolved = yaml.safe_load((folder / "config.resolved.yaml").read_text())
    profile = args.profile or str(MEASURED_DEVICES_DIR / f"{args.device}__{MODEL}.csv")
    points = real_points(folder)
    out = common.results_dir(NAME)
    rows, requests, overheads = [], [], []
    for system in args.systems.split(","):
        if system not in resolved.get("clusters", {}):
            raise common.ExperimentError(f"{folder}'s config names no cluster for {system!r}")
        if not any(s == system for s, _ in points):
            raise common.ExperimentError(f"{folder}/requests.csv has no {system!r} point")
        cl = cluster.load(Path(args.configs_root) / resolved["clusters"][system])
        emu_cl = emulated_cluster(cl, args.device, profile, out / "launch", args.prefill_device, args.prefill_profile,
                                  args.colocation)
        r, q, o = run_system(emu_cl, system, points, out, real_stats=real_server_stats(folder))
        rows, requests, overheads = rows + r, requests + q, overheads + o
    common.write_csv(out / "compare.csv", COMPARE_COLUMNS, rows)
    common.write_csv(out / "requests.csv", ["system", "request_rate", "rid", "arrival_s", "prompt_len", "output_len",
                                            "first_token_s", "finish_s"], requests, digits=12)  # fmt: skip
    common.write_csv(out / "overheads.csv", emulated.OVERHEAD_COLUMNS, overheads)
    for system, (thr, tpot) in median_errors(rows).items():
        print(f"{NAME}: {system}: median |error| throughput {thr:.1%}, TPOT {tpot:.1%} over "
              f"{sum(1 for r in rows if r[0] == system)} rates (real: {folder})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

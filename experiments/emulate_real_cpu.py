"""The emulator on the real CPU experiment: the same stacks and request streams, GPU work from a CPU profile.

Issue 16's third check. The real CPU experiment (issue 14, `experiments/real_cpu/`) measures stock PD (and
Adrenaline) on a pinned, capacity-capped SmolLM2-135M pair. This runs its sweep again through the emulator:
the real experiment's own cluster YAMLs (servers, pins, pools, decode reserve, proxy), with an `emulate:`
block whose device is the CPU profile (`scheduler/profiles/<device>.device.json` and its table CSV) instead
of a GPU's, and every point's recorded arrivals and exact lengths (the real folder's `requests.csv`) sent
by the emulator's client. Both sides' metrics come from per-request timestamps through `sim.metrics`, so
the comparison does not depend on bench_serving's definitions. Writes `$RESULTS_DIR/emulate_real_cpu/`:
`compare.csv` (per system and rate: real and emulated TTFT, TPOT, throughput and their relative errors),
`requests.csv`, `overheads.csv` (experiments/emulated.py) and prints the median absolute error on
throughput and TPOT per system.

    python -m experiments.emulate_real_cpu --real RESULTS/real_cpu [--configs-root DIR] [--systems pd]

`--configs-root`: the checkout holding the YAMLs the real folder names (default this repo). Holds real
servers: run it under `flock /tmp/heavy.lock` on a shared machine. What the emulator cannot reproduce on
CPU (docs/emulator.md, "Emulating the real CPU experiment"): the executor sharing prefill's core (the
emulated composition is the GPU's SM split), and SGLang's CPU work that a real core serializes with the
forward but the emulated step hides under overlap scheduling.
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
                   "emulated_mean_decode_batch", "emulated_bubble_share"]  # fmt: skip
MODEL = "smollm2-135m"
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


def emulated_cluster(cl, device: str, profile: str, run_dir: Path):
    """The real experiment's ClusterConfig with an `emulate:` block for `device`: its pools move from the
    roles' `--max-total-tokens` into the block (the emulator sets that flag), everything else is kept."""
    from adrenaline_sgl.emulate.config import EmulateConfig

    pre_args, pre_pool = _take_flag(cl.prefill.extra_args, POOL_FLAG)
    dec_args, dec_pool = _take_flag(cl.decode.extra_args, POOL_FLAG)
    if dec_pool is None:
        raise common.ExperimentError(f"the real decode server has no {POOL_FLAG}: nothing says what pool to emulate")
    emu = EmulateConfig(gpu=device, model=MODEL, predictor="table", profile=profile, max_total_tokens=dec_pool,
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


def run_system(cl, system: str, points: dict, out: Path, progress=print) -> list[list]:
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
            dec = [s["batch"] for s in pt.steps.get("decode", []) if s["kind"] == "decode"]
            oh = emulated.overheads(pt)
            bubble = next((o[8] for o in oh if o[2] == "decode"), math.nan)
            rows.append([system, rate, len(real), m_real.completed, m_emu.completed, m_real.mean_ttft_s,
                         m_emu.mean_ttft_s, m_real.mean_tpot_ms, m_emu.mean_tpot_ms,
                         _rel(m_emu.mean_tpot_ms, m_real.mean_tpot_ms), m_real.decode_throughput_tok_s,
                         m_emu.decode_throughput_tok_s,
                         _rel(m_emu.decode_throughput_tok_s, m_real.decode_throughput_tok_s),
                         float(np.mean(dec)) if dec else math.nan, bubble])  # fmt: skip
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
    ap.add_argument("--device", default="cpu-epyc-1core-sgl", help="the CPU profile's device name "
                                                                   "(scheduler/profiles/<device>.device.json)")
    ap.add_argument("--profile", help="its table CSV (default scheduler/profiles/<device>__smollm2-135m.csv)")
    ap.add_argument("--systems", default="pd", help="comma-separated: pd (adrenaline: see the module docstring)")
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
        r, q, o = run_system(emulated_cluster(cl, args.device, profile, out / "launch"), system, points, out)
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

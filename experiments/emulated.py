"""MODE=emulated: a figure's sweep through real SGLang servers whose GPU is emulated (docs/emulator.md).

Interface (experiments/README.md):
- select it with `make reproduce-fig5 MODE=emulated` (or `ARGS="--mode emulated"`);
- per system, one stack is started by the launcher from `adrenaline_sgl/configs/emulate_<system>.yaml`
  (stock PD behind SGLang's mini load balancer; Adrenaline with its executor, backend and `auto` proxy),
  its `emulate:` block set from the figure's config (gpu, model, executor SM share, clock scale). Every
  rate of the sweep runs on that stack in turn (each point waits until the previous one has drained);
- a point is the simulator's request stream for (workload, rate, num_requests, seed)
  (`sim.workloads.make_requests`), sent open loop by `adrenaline_sgl.emulate.client` (arrivals x clock
  scale), with every metric derived by `sim.metrics` from the returned per-request timestamps (emulated
  seconds). The servers' per-step traces (`emulate/trace.py`) give decode batch, KV pool use and queues
  over time, and SGLang's real CPU time per step;
- a request that fails is counted and named; the figure's run exits 1 after writing its CSVs if any did.

Needs the CPU serving stack (`make setup`), and holds the machine: run it under `flock /tmp/heavy.lock` on
a shared machine.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adrenaline_sgl.scheduler.bounds import DEFAULT_EXECUTOR_SM_SHARE

from .common import REPO_ROOT, ExperimentError

CLUSTER_CONFIGS = {"pd": "adrenaline_sgl/configs/emulate_pd.yaml",
                   "adrenaline": "adrenaline_sgl/configs/emulate_adrenaline.yaml"}  # fmt: skip
REQUEST_TIMEOUT_S = 1800.0  # wall seconds for one request
TIMELINE_BIN_S = 1.0  # emulated seconds per timeline bin


@dataclass
class EmulatedPoint:
    """One (system, rate) run: per-request records (emulated seconds from the run's start), the servers'
    step traces over the run (dicts from `emulate/trace.py`, times converted to emulated seconds), the
    failures, and the proxy's offload decisions (Adrenaline)."""

    system: str
    rate: float
    records: list  # adrenaline_sgl.sim.records.RequestRecord
    failures: list[str]
    steps: dict[str, list[dict]]  # role -> trace rows inside the run
    offloaded: int = 0
    routed: int = 0
    wall_s: float = 0.0
    clock_scale: float = 1.0
    extra: dict = field(default_factory=dict)

    @property
    def completed(self) -> int:
        return sum(1 for r in self.records if math.isfinite(r.finish_s))


def figure_config(cfg: dict, quick: bool) -> dict:
    """The figure's config for MODE=emulated: its `emulated:` section (rates, requests, clock scale; with
    `--quick` that section's `quick:`) replaces the simulator's sweep; CLI flags still override it after."""
    cfg = dict(cfg)
    emu = dict(cfg.pop("emulated", None) or {})
    cfg.pop("quick", None)
    small = emu.pop("quick", None) or {}
    cfg.update({k: v for k, v in emu.items() if k != "clock_scale"})
    if quick:
        cfg.update(small)
    cfg["emulated"] = {"clock_scale": emu.get("clock_scale", 1.0)}
    return cfg


def emulate_settings(cfg: dict) -> dict:
    """The `emulate:` block for the figure (gpu, model, executor SM share, clock scale)."""
    emu = dict(cfg.get("emulated") or {})
    share = float(cfg.get("executor_sm_share", DEFAULT_EXECUTOR_SM_SHARE))
    return {"gpu": cfg["gpu"], "model": cfg["model"], "executor_sm_share": share,
            "clock_scale": float(emu.get("clock_scale", 1.0)), "link": cfg.get("link", "nvlink")}  # fmt: skip


def cluster_config(cfg: dict, system: str, run_dir: Path):
    """The launcher's ClusterConfig of `system` with the figure's emulated GPU."""
    from adrenaline_sgl.configs import cluster
    from adrenaline_sgl.emulate.config import EmulateConfig

    if system not in CLUSTER_CONFIGS:
        raise ExperimentError(f"MODE=emulated has no stack for system {system!r}; valid: {', '.join(CLUSTER_CONFIGS)}")
    cl = cluster.load(REPO_ROOT / CLUSTER_CONFIGS[system])
    emu = dataclasses.replace(cl.emulate or EmulateConfig(), **emulate_settings(cfg))
    return dataclasses.replace(cl, emulate=emu, run_dir=str(run_dir))


def request_specs(cfg: dict, workload: str, rate: float, num_requests: int, tag: str) -> list:
    """The simulator's request stream for this point, as client RequestSpecs."""
    from adrenaline_sgl.emulate.client import RequestSpec
    from adrenaline_sgl.sim.workloads import make_requests

    from .sim_runs import workload as workload_config

    reqs = make_requests(workload_config(cfg, workload, rate, num_requests))
    return [RequestSpec(f"{tag}-{i}", float(a), int(p), int(o))
            for i, (a, p, o) in enumerate(zip(reqs.arrival_s, reqs.prompt_len, reqs.output_len))]


def _vocab_size(cl) -> int:
    from adrenaline_sgl.configs.cluster import resolve_model
    from adrenaline_sgl.emulate import standin

    folder = standin.checkpoint_dir(cl.emulate.model, resolve_model(cl.model))
    return int(json.loads((folder / "config.json").read_text())["vocab_size"])


_DECISION = re.compile(r'^adrenaline_proxy_requests_total\{[^}]*offloaded="(\w+)"[^}]*\}\s+([0-9.e+]+)', re.M)


def _decisions(metrics_url: str | None) -> tuple[int, int]:
    """(offloaded, routed) so far from the adrenaline proxy's Prometheus counters; zeros for other proxies."""
    if not metrics_url:
        return 0, 0
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return 0, 0
    off = total = 0
    for flag, value in _DECISION.findall(text):
        total += int(float(value))
        off += int(float(value)) if flag.lower() == "true" else 0
    return off, total


def run_system(cfg: dict, system: str, workload: str, rates: list[float], num_requests: int, out: Path,
               progress=print) -> list[EmulatedPoint]:
    """Start `system`'s emulated stack once and run every rate on it; the stack is always stopped."""
    from adrenaline_sgl import launch
    from adrenaline_sgl.emulate import client

    cl = cluster_config(cfg, system, out / "launch")
    vocab = _vocab_size(cl)
    k = cl.emulate.clock_scale
    points = []
    try:
        with launch.start_cluster(cl) as running:
            trace_dir = Path(running.folder) / "emulate"
            proxy = running.spec("proxy")
            metrics_url = f"http://{proxy.host}:{proxy.ports[1]}/metrics" if cl.proxy.kind == "adrenaline" else None
            progress(f"emulated {system}: stack ready in {running.record['all_healthy_s']} s ({running.folder})")
            for rate in rates:
                specs = request_specs(cfg, workload, rate, num_requests, f"{system}-{rate:g}")
                off0, routed0 = _decisions(metrics_url)
                wall0 = time.monotonic()
                t0, results = client.run(running.proxy_url, specs, vocab, k, REQUEST_TIMEOUT_S)
                wall = time.monotonic() - wall0
                time.sleep(0.5)  # the last trace rows reach the files (line-buffered)
                off1, routed1 = _decisions(metrics_url)
                pt = _point(system, rate, results, _traces(trace_dir, t0, k, wall0 + wall), k)
                pt.offloaded, pt.routed, pt.wall_s = off1 - off0, routed1 - routed0, wall
                points.append(pt)
                progress(f"emulated {system} @ {rate:g} req/s: {pt.completed}/{len(specs)} completed in {wall:.0f} s "
                         f"wall (clock x{k:g})" + (f"; failed: {pt.failures[:3]}" if pt.failures else ""))
    except launch.LaunchError as err:
        raise ExperimentError(f"MODE=emulated: the {system} stack failed: {str(err).splitlines()[0]}") from None
    return points


def _point(system: str, rate: float, results: list, steps: dict, k: float) -> EmulatedPoint:
    from adrenaline_sgl.sim.records import RequestRecord

    records, failures = [], []
    for i, r in enumerate(results):
        rec = RequestRecord(i, r.arrival_s, r.prompt_len, r.output_len)
        if r.error:
            failures.append(f"{r.rid}: {r.error}")
        else:
            rec.first_token_s, rec.finish_s, rec.tokens_out = r.first_token_s, r.finish_s, r.tokens_out
        records.append(rec)
    return EmulatedPoint(system, rate, records, failures, steps, clock_scale=k)


def _traces(trace_dir: Path, t0: float, k: float, t_end: float) -> dict[str, list[dict]]:
    """Each role's trace rows launched within [t0, t_end] (wall), times as emulated seconds from t0."""
    from adrenaline_sgl.emulate.trace import read

    out: dict[str, list[dict]] = {}
    for path in sorted(glob.glob(str(trace_dir / "emulate-*.csv"))):
        role = os.path.basename(path).split("-")[1]
        rows = [r for r in read(path) if t0 <= r["launch_s"] <= t_end]
        for r in rows:
            for col in ("launch_s", "start_s", "done_s", "processed_s"):
                r[col] = (r[col] - t0) / k
            r["wall_idle_before_ms"], r["wall_cpu_ms"] = r["idle_before_ms"], r["cpu_ms"]
        out.setdefault(role, []).extend(rows)
    return out


# ---- summaries shared by the figure and the comparison ----

TIMELINE_COLUMNS = ["system", "request_rate", "source", "t_s", "decode_batch", "decode_kv_used_tokens",
                    "prefill_kv_used_tokens", "prefill_waiting", "decode_waiting"]  # fmt: skip


def timeline(pt: EmulatedPoint, bin_s: float = TIMELINE_BIN_S) -> list[list]:
    """Per emulated-second bin: mean decode batch, last KV use on decode and prefill (tokens in use, the
    Adrenaline executor's unused reserve excluded), queue lengths (prefill: waiting for bootstrap or a
    batch; decode: waiting for pre-allocation or the transfer)."""
    dec, pre = pt.steps.get("decode", []), pt.steps.get("prefill", [])
    end = max([r["done_s"] for r in dec + pre] + [0.0])
    rows = []
    for b in range(int(end // bin_s) + 1):
        lo, hi = b * bin_s, (b + 1) * bin_s
        d = [r for r in dec if lo <= r["done_s"] < hi and r["kind"] == "decode"]
        p = [r for r in pre if lo <= r["done_s"] < hi]
        rows.append([pt.system, pt.rate, "emulated", lo,
                     float(np.mean([r["batch"] for r in d])) if d else 0.0,
                     _used(d[-1]) if d else math.nan, _used(p[-1]) if p else math.nan,
                     p[-1]["waiting"] + p[-1]["bootstrap"] if p else math.nan,
                     d[-1]["prealloc"] + d[-1]["transfer"] if d else math.nan])  # fmt: skip
    return rows


def steady_throughput(pt: EmulatedPoint):
    """sim.metrics' steady-state throughputs from the point's records and the decode servers' step traces
    (a step's batch counts its output tokens; the first token counts where the prefill ended)."""
    from types import SimpleNamespace

    from adrenaline_sgl.sim import metrics
    from adrenaline_sgl.sim.records import DECODE

    reqs = [dataclasses.replace(r, prefill_end_s=r.first_token_s) for r in pt.records]
    steps = [SimpleNamespace(kind=DECODE, start_s=r["start_s"], end_s=r["done_s"], batch=r["batch"])
             for r in pt.steps.get("decode", []) if r["kind"] == "decode"]
    return metrics.steady_throughput(SimpleNamespace(requests=reqs, steps=steps))


def _used(r: dict) -> float:
    return r["kv_used"] - r.get("exec_reserve_free", 0.0)


OVERHEAD_COLUMNS = ["system", "request_rate", "role", "steps", "mean_batch", "mean_model_ms", "mean_cpu_wall_ms",
                    "mean_bubble_wall_ms", "bubble_share", "clock_scale"]  # fmt: skip


def overheads(pt: EmulatedPoint) -> list[list]:
    """Per role: SGLang's real CPU time per step (scheduler thread, wall ms on this machine), and the bubbles:
    emulated-GPU idle time right after a step while requests were running (CPU work the overlap scheduler
    could not hide), as wall ms and as a share of the emulated busy time."""
    out = []
    for role, rows in sorted(pt.steps.items()):
        steps = [r for r in rows if r["kind"] in ("prefill", "decode")]
        if not steps:
            continue
        bubbles = [cur["wall_idle_before_ms"] for prev, cur in zip(steps, steps[1:]) if prev["running"] > 0
                   and role == "decode"]  # fmt: skip
        busy_wall_ms = sum(r["model_ms"] for r in steps) * pt.clock_scale
        share = sum(bubbles) / busy_wall_ms if bubbles and busy_wall_ms > 0 else math.nan
        out.append([pt.system, pt.rate, role, len(steps), float(np.mean([r["batch"] for r in steps])),
                    float(np.mean([r["model_ms"] for r in steps])), float(np.mean([r["wall_cpu_ms"] for r in steps])),
                    float(np.mean(bubbles)) if bubbles else math.nan, share, pt.clock_scale])  # fmt: skip
    return out

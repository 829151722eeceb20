"""The real CPU experiment from results/real_cpu/{e2e,timeline}.csv: the client's numbers vs request rate
(TTFT on a log scale, mean and P99 TPOT with the SLO, throughput whole-run and steady-state), what the servers
report (decode batch and its offloaded part, per-layer round trip and executor attention, core busy shares),
and the decode batch over time at the highest rate. Titled "measured on CPU"."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import matplotlib.pyplot as plt

_spec = importlib.util.spec_from_file_location("plots_common", Path(__file__).with_name("_common.py"))
pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pc)


def _slo(fig_dir: Path) -> float | None:
    import yaml

    path = Path(fig_dir) / "config.resolved.yaml"
    if not path.exists():
        return None
    return (yaml.safe_load(path.read_text()) or {}).get("tpot_slo_ms")


def _finite(xs, ys):
    pts = [(x, y) for x, y in zip(xs, ys) if isinstance(y, float) and math.isfinite(y)]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot(fig_dir: Path) -> Path:
    fig_dir = Path(fig_dir)
    rows = pc.read(fig_dir / "e2e.csv")
    timeline_path = fig_dir / "timeline.csv"
    timeline = pc.read(timeline_path) if timeline_path.exists() else []
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.6))
    ax = axes.ravel()
    systems = sorted({r["system"] for r in rows}, key=lambda s: s != "pd")
    for system in systems:
        mine = sorted((r for r in rows if r["system"] == system), key=lambda r: r["request_rate"])
        st = pc.SYSTEM_STYLE.get(system, dict(label=system))
        rates = [r["request_rate"] for r in mine]

        def line(a, col, rates=rates, mine=mine, st=st, **kw):
            xs, ys = _finite(rates, [r[col] for r in mine])
            a.plot(xs, ys, **{**st, **kw})

        line(ax[0], "mean_ttft_s")
        line(ax[1], "mean_tpot_ms")
        line(ax[1], "p99_tpot_ms", linestyle=":", mfc="none", label=f"{st['label']} P99")
        line(ax[2], "steady_throughput_tok_s", label=f"{st['label']} steady state")
        line(ax[2], "decode_throughput_tok_s", linestyle="--", mfc="none", label=f"{st['label']} whole run")
        line(ax[3], "decode_batch_mean", label=f"{st['label']} batch")
        if system != "pd":
            line(ax[3], "decode_offloaded_mean", linestyle="--", mfc="none", label=f"{st['label']} offloaded")
            line(ax[4], "rtt_p50_ms", label="round trip p50")
            line(ax[4], "rtt_p99_ms", linestyle="--", mfc="none", label="round trip p99")
            line(ax[4], "executor_attn_ms_per_layer", linestyle=":", marker="^", label="executor attention")
            line(ax[5], "executor_busy_frac", linestyle=":", marker="^", label=f"{st['label']} executor (CPU 0)")
        line(ax[5], "prefill_busy_frac", label=f"{st['label']} prefill (CPU 0)")
        line(ax[6], "decode_step_ms_mean", label=st["label"])
        if timeline:
            top = max(r["request_rate"] for r in mine)
            pts = [t for t in timeline if t["system"] == system and t["request_rate"] == top]
            xs, ys = _finite([t["t_s"] for t in pts], [t["decode_running"] for t in pts])
            ax[7].plot(xs, ys, color=st["color"], label=f"{st['label']} running ({top:g} req/s)")
            if system != "pd":
                xs, ys = _finite([t["t_s"] for t in pts], [t["decode_offloaded"] for t in pts])
                ax[7].plot(xs, ys, color=st["color"], linestyle="--", label=f"{st['label']} offloaded")
    slo = _slo(fig_dir)
    if slo:
        ax[1].axhline(slo, color="0.5", linestyle="-.", linewidth=1, label=f"TPOT SLO {slo:g} ms")
    labels = ["mean TTFT (s, log)", "TPOT (ms): mean, P99", "output tokens/s", "decode batch (step-weighted mean)",
              "per layer (ms): round trip, executor attention", "busy share of CPU 0", "decode step (ms, mean)",
              "decode running requests"]  # fmt: skip
    for i, (a, label) in enumerate(zip(ax, labels)):
        a.set_xlabel("time in the point (s)" if i == 7 else "request rate (req/s)")
        a.set_ylabel(label)
        a.grid(alpha=0.3)
        if a.has_data():
            a.legend(fontsize=7)
    ax[0].set_yscale("log")
    r0 = rows[0]
    fig.suptitle(f"Real CPU experiment, measured on CPU ({pc.source(fig_dir)}): {r0['model']}, {r0['workload']}, "
                 "prefill + executor on CPU 0, decode on CPU 1, decode KV capped")
    return pc.save(fig, fig_dir, "real_cpu")

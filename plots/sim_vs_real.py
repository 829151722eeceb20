"""Simulator vs real from results/real_cpu/sim_vs_real.csv (+ _summary.csv): per system (rows) and metric
(columns: steady-state throughput, mean TPOT, mean TTFT on a log scale, decode batch), measured (solid) and
predicted (dashed, hollow) against the request rate, with each side's knee as a vertical line."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import matplotlib.pyplot as plt

_spec = importlib.util.spec_from_file_location("plots_common", Path(__file__).with_name("_common.py"))
pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pc)

METRICS = [("steady_throughput_tok_s", "steady-state output tokens/s"), ("mean_tpot_ms", "mean TPOT (ms)"),
           ("mean_ttft_s", "mean TTFT (s, log)"), ("decode_batch_mean", "decode batch (step-weighted)")]


def plot(fig_dir: Path) -> Path:
    fig_dir = Path(fig_dir)
    rows = pc.read(fig_dir / "sim_vs_real.csv")
    summary_path = fig_dir / "sim_vs_real_summary.csv"
    summary = pc.read(summary_path) if summary_path.exists() else []
    systems = sorted({r["system"] for r in rows}, key=lambda s: s != "pd")
    fig, axes = plt.subplots(len(systems), len(METRICS), figsize=(17, 3.8 * len(systems)), squeeze=False)
    for i, system in enumerate(systems):
        mine = sorted((r for r in rows if r["system"] == system), key=lambda r: r["request_rate"])
        st = pc.SYSTEM_STYLE.get(system, dict(color="k", marker="o", label=system))
        rates = [r["request_rate"] for r in mine]
        knees = next((s for s in summary if s["system"] == system), None)
        for ax, (metric, label) in zip(axes[i], METRICS):
            ax.plot(rates, [r[f"{metric}_measured"] for r in mine], color=st["color"], marker=st["marker"],
                    label="measured")
            ax.plot(rates, [r[f"{metric}_predicted"] for r in mine], color=st["color"], marker=st["marker"],
                    linestyle="--", mfc="none", label="simulated")
            if knees:
                for key, style in (("knee_measured", "-"), ("knee_predicted", "--")):
                    if isinstance(knees[key], float) and math.isfinite(knees[key]):
                        ax.axvline(knees[key], color="0.5", linestyle=style, linewidth=0.8,
                                   label=f"knee ({key.split('_')[1]})")
            ax.set_title(f"{st['label']}: {label}", fontsize=9)
            ax.set_xlabel("request rate (req/s)")
            ax.grid(alpha=0.3)
            if metric == "mean_ttft_s":
                ax.set_yscale("log")
        axes[i][0].legend(fontsize=7)
    fig.suptitle("Simulator vs real, measured on CPU (SmolLM2-135M, pinned 1P1D, decode KV capped): "
                 "the simulator on the same arrivals with the SGLang CPU profiles")
    return pc.save(fig, fig_dir, "sim_vs_real")

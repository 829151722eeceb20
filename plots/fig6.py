"""Figure 6 from results/fig6/{utilization,capacity_timeline}.csv: utilization vs offload ratio (each point at
the highest load it sustains; the decode panel notes that rate and the N/M actually decoded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

_spec = importlib.util.spec_from_file_location("plots_common", Path(__file__).with_name("_common.py"))
pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pc)


def plot(fig_dir: Path) -> Path:
    fig_dir = Path(fig_dir)
    util = pc.read(fig_dir / "utilization.csv")
    timeline = pc.read(fig_dir / "capacity_timeline.csv")
    models = list(dict.fromkeys(r["model"] for r in util))
    ratios = sorted({r["offload_ratio"] for r in util})
    fig, axes = plt.subplots(1, 3 + len(models), figsize=(5 * (3 + len(models)), 4))
    width = 0.8 / max(len(models), 1)
    for i, (col, label, scale) in enumerate((("prefill_hbm_bw_gbs", "prefill HBM bandwidth (GB/s)", 1.0),
                                             ("decode_tflops", "decode compute (TFLOP/s)", 1.0),
                                             ("prefill_hbm_capacity_frac", "prefill HBM capacity (%)", 100.0))):
        ax = axes[i]
        for j, model in enumerate(models):
            mine = {r["offload_ratio"]: r for r in util if r["model"] == model}
            xs = np.arange(len(ratios)) + (j - (len(models) - 1) / 2) * width
            heights = [mine[x][col] * scale if x in mine else np.nan for x in ratios]
            ax.bar(xs, heights, width, label=model)
            if col == "decode_tflops" and "request_rate" in next(iter(mine.values()), {}):
                for x, h, ratio in zip(xs, heights, ratios):
                    r = mine.get(ratio)
                    if r is not None:
                        nm = "" if ratio == 0 else f"\nN/M {r['achieved_offload_ratio']:.2f}"
                        ax.annotate(f"{r['request_rate']:.3g}/s{nm}", (x, h), ha="center", va="bottom", fontsize=6)
        ax.set_xticks(np.arange(len(ratios)), ["PD" if x == 0 else f"{x:.0%}" for x in ratios])
        ax.set_xlabel("offload ratio")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    for ax, model in zip(axes[3:], models):
        for x in ratios:
            mine = [r for r in timeline if r["model"] == model and r["offload_ratio"] == x]
            ax.plot([r["t_s"] for r in mine], [100 * r["prefill_hbm_capacity_frac"] for r in mine],
                    label="PD" if x == 0 else f"{x:.0%}")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("prefill HBM capacity (%)")
        ax.set_ylim(0, 100)
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="offload ratio")
    meta = pc.read(fig_dir / "meta.csv")[0]
    fig.suptitle(f"Figure 6 ({pc.source(fig_dir)}): utilization vs offload ratio, {meta.get('workload', '')}, "
                 f"1P1D on {meta.get('gpu', '')}")
    return pc.save(fig, fig_dir, "fig6")

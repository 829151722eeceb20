"""Figure 7 from results/fig7/throughput.csv: decode throughput and gain per model x workload."""

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
    rows = pc.read(fig_dir / "throughput.csv")
    combos = list(dict.fromkeys((r["model"], r["workload"]) for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, ax = plt.subplots(figsize=(2.2 * len(combos) + 3, 4.2))
    width = 0.8 / len(systems)
    x = np.arange(len(combos))
    for j, system in enumerate(systems):
        vals = {(r["model"], r["workload"]): r for r in rows if r["system"] == system}
        ys = [vals[c]["decode_throughput_tok_s"] if c in vals else np.nan for c in combos]
        bars = ax.bar(x + (j - (len(systems) - 1) / 2) * width, ys, width,
                      color=pc.SYSTEM_STYLE.get(system, {}).get("color"),
                      label=pc.SYSTEM_STYLE.get(system, {}).get("label", system))
        if system != "pd":
            for b, c in zip(bars, combos):
                gain = vals[c]["gain"] if c in vals else np.nan
                if np.isfinite(gain):
                    ax.annotate(f"{gain:.2f}x", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                                va="bottom", fontsize=9)
    ax.set_xticks(x, [f"{m}\n{w}" for m, w in combos])
    ax.set_ylabel("max decode throughput within the SLO (tokens/s)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    meta = pc.read(fig_dir / "meta.csv")[0]
    slo = f"P99 TPOT <= {meta.get('tpot_slo_ms', '?'):g} ms, P90 TTFT <= {meta.get('ttft_slo_s', '?'):g} s"
    fig.suptitle(f"Figure 7 ({pc.source(fig_dir)}): throughput gain over PD, 1P1D on {meta.get('gpu', '')} "
                 f"(SLO: {slo})")
    return pc.save(fig, fig_dir, "fig7")

"""Figure 5 from results/fig5/e2e.csv (and e2e_detail.csv when simulated): TTFT (log scale, so a blow-up at
saturation shows beside the low-load values), mean TPOT, P99 TPOT and throughput vs request rate."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt

_spec = importlib.util.spec_from_file_location("plots_common", Path(__file__).with_name("_common.py"))
pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pc)

PAPER_MAX_RATE = 4.8  # the paper's sweep ends here (its setup text); later rates are ours
PANELS = [("mean_ttft_s", "mean TTFT (s, log)"), ("mean_tpot_ms", "mean TPOT (ms)"), ("p99_tpot_ms", "P99 TPOT (ms)"),
          ("decode_throughput_tok_s", "decode throughput (output tokens/s)")]  # fmt: skip


def plot(fig_dir: Path) -> Path:
    fig_dir = Path(fig_dir)
    detail = fig_dir / "e2e_detail.csv"
    rows = pc.read(detail if detail.exists() else fig_dir / "e2e.csv")
    steady = "steady_throughput_tok_s" in rows[0]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.9))
    for system in sorted({r["system"] for r in rows}, key=lambda s: s != "pd"):
        mine = sorted((r for r in rows if r["system"] == system), key=lambda r: r["request_rate"])
        style = pc.SYSTEM_STYLE.get(system, dict(label=system))
        rates = [r["request_rate"] for r in mine]
        for ax, (col, _) in zip(axes, PANELS):
            label = f"{style['label']} (whole run)" if steady and col == "decode_throughput_tok_s" else style["label"]
            ax.plot(rates, [r[col] for r in mine], **{**style, "label": label})
        if steady:  # the load the system carries while requests arrive (drain tail excluded)
            axes[3].plot(rates, [r["steady_throughput_tok_s"] for r in mine], linestyle="--", marker=style["marker"],
                         color=style["color"], mfc="none", label=f"{style['label']} (steady state)")
    for ax, (_, label) in zip(axes, PANELS):
        if max(r["request_rate"] for r in rows) > PAPER_MAX_RATE:
            ax.axvspan(min(r["request_rate"] for r in rows), PAPER_MAX_RATE, color="0.92", zorder=0,
                       label="paper's rates" if ax is axes[0] else None)
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[3].legend(fontsize=7)
    r0 = rows[0]
    fig.suptitle(f"Figure 5 ({pc.source(fig_dir)}): {r0['model']}, {r0['workload']}, PD vs Adrenaline")
    return pc.save(fig, fig_dir, "fig5")

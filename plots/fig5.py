"""Figure 5 from results/fig5/e2e.csv: TTFT, mean TPOT, P99 TPOT and decode throughput vs request rate."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt

_spec = importlib.util.spec_from_file_location("plots_common", Path(__file__).with_name("_common.py"))
pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pc)

PANELS = [("mean_ttft_s", "mean TTFT (s)"), ("mean_tpot_ms", "mean TPOT (ms)"), ("p99_tpot_ms", "P99 TPOT (ms)"),
          ("decode_throughput_tok_s", "decode throughput (tokens/s)")]  # fmt: skip


def plot(fig_dir: Path) -> Path:
    fig_dir = Path(fig_dir)
    rows = pc.read(fig_dir / "e2e.csv")
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for system in sorted({r["system"] for r in rows}, key=lambda s: s != "pd"):
        mine = sorted((r for r in rows if r["system"] == system), key=lambda r: r["request_rate"])
        style = pc.SYSTEM_STYLE.get(system, dict(label=system))
        for ax, (col, _) in zip(axes, PANELS):
            ax.plot([r["request_rate"] for r in mine], [r[col] for r in mine], **style)
    for ax, (_, label) in zip(axes, PANELS):
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    r0 = rows[0]
    fig.suptitle(f"Figure 5 ({pc.source(fig_dir)}): {r0['model']}, {r0['workload']}, PD vs Adrenaline")
    return pc.save(fig, fig_dir, "fig5")

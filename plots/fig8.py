"""Figure 8 from results/fig8/sensitivity.csv: throughput vs offload ratio, the scheduler's choice marked."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt

_spec = importlib.util.spec_from_file_location("plots_common", Path(__file__).with_name("_common.py"))
pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pc)


def plot(fig_dir: Path) -> Path:
    fig_dir = Path(fig_dir)
    rows = pc.read(fig_dir / "sensitivity.csv")
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 4.2), squeeze=False)
    for ax, wl in zip(axes[0], workloads):
        fixed = sorted((r for r in rows if r["workload"] == wl and r["offload_ratio"] != "auto"),
                       key=lambda r: r["offload_ratio"])
        ax.plot([r["offload_ratio"] for r in fixed], [r["decode_throughput_tok_s"] for r in fixed], "o-",
                color="tab:red", label="fixed ratio (0 = PD)")
        for r in rows:
            if r["workload"] == wl and r["offload_ratio"] == "auto":
                ax.axhline(r["decode_throughput_tok_s"], color="k", ls="--", label="scheduler's choice (auto)")
        ax.set_xlabel("offload ratio (bound OB = N / M)")
        ax.set_ylabel("max decode throughput within the SLO (tokens/s)")
        ax.set_title(f"{rows[0]['model']}, {wl}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    meta = pc.read(fig_dir / "meta.csv")[0]
    slo = f"P99 TPOT <= {meta.get('tpot_slo_ms', '?'):g} ms, P90 TTFT <= {meta.get('ttft_slo_s', '?'):g} s"
    fig.suptitle(f"Figure 8 ({pc.source(fig_dir)}): offload-ratio sensitivity, 1P1D on {meta.get('gpu', '')} "
                 f"(SLO: {slo})")
    return pc.save(fig, fig_dir, "fig8")

"""Figure 2 from results/fig2/kernels.csv: per-kernel compute and HBM-bandwidth utilization."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

_spec = importlib.util.spec_from_file_location("plots_common", Path(__file__).with_name("_common.py"))
pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pc)

OPS = ("qkv", "attn", "o_proj", "ffn")
COLORS = {"qkv": "tab:blue", "attn": "tab:red", "o_proj": "tab:green", "ffn": "tab:orange"}


def plot(fig_dir: Path) -> Path:
    fig_dir = Path(fig_dir)
    rows = pc.read(fig_dir / "kernels.csv")
    fig, axes = plt.subplots(2, 2, figsize=(13, 7))
    for i, phase in enumerate(("prefill", "decode")):
        for j, (metric, label) in enumerate((("compute_pct", "compute"), ("hbm_bw_pct", "HBM bandwidth"))):
            ax = axes[i][j]
            sizes = sorted({r["size"] for r in rows if r["phase"] == phase})
            width = 0.8 / len(OPS)
            for k, op in enumerate(OPS):
                for src in ("model", "paper"):
                    vals = {r["size"]: r[metric] for r in rows if r["phase"] == phase and r["op"] == op
                            and r["source"] == src}  # fmt: skip
                    if not vals:
                        continue
                    xs = np.arange(len(sizes)) + (k - 1.5) * width
                    ys = [vals.get(s, np.nan) for s in sizes]
                    if src == "model":
                        ax.bar(xs, ys, width, color=COLORS[op], alpha=0.9, label=f"{op} (model)")
                    else:
                        ax.plot(xs, ys, "k_", markersize=10, mew=2, label="paper" if k == 0 else None)
            ax.set_xticks(np.arange(len(sizes)), [str(int(s)) for s in sizes])
            ax.set_xlabel("prompt length" if phase == "prefill" else "batch size")
            ax.set_ylabel(f"{label} (% of peak)")
            ax.set_ylim(0, 100)
            ax.set_title(f"{phase}: {label}")
            ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7, ncol=2)
    meta = pc.read(fig_dir / "meta.csv")[0]
    fig.suptitle(f"Figure 2 ({pc.source(fig_dir)}: cost model fitted to the paper's points, black ticks): "
                 f"per-kernel utilization, {meta.get('model', '')} on {meta.get('gpu', '')}")
    return pc.save(fig, fig_dir, "fig2")

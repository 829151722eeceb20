"""Figure 1 from results/fig1/{prefill,decode,capacity}.csv: PD utilization of prefill and decode GPUs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt

_spec = importlib.util.spec_from_file_location("plots_common", Path(__file__).with_name("_common.py"))
pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pc)

STYLE = {"model": dict(ls="-"), "paper": dict(ls=":", alpha=0.8)}


def _util_panel(ax, rows, x: str, xlabel: str, title: str) -> None:
    for src in ("model", "paper"):
        mine = sorted((r for r in rows if r["source"] == src), key=lambda r: r[x])
        if not mine:
            continue
        xs = [r[x] for r in mine]
        ax.plot(xs, [r["compute_pct"] for r in mine], marker="o", color="tab:green", label=f"compute ({src})",
                **STYLE[src])
        ax.plot(xs, [r["hbm_bw_pct"] for r in mine], marker="s", color="tab:purple", label=f"HBM bandwidth ({src})",
                **STYLE[src])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("utilization (% of peak)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot(fig_dir: Path) -> Path:
    fig_dir = Path(fig_dir)
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.2))
    _util_panel(a, pc.read(fig_dir / "prefill.csv"), "prompt_len", "prompt length (tokens)", "(a) prefill")
    _util_panel(b, pc.read(fig_dir / "decode.csv"), "batch", "decode batch size", "(b) decode")
    cap = pc.read(fig_dir / "capacity.csv")
    for kind, color in (("prefill", "tab:orange"), ("decode", "tab:blue")):
        mine = [r for r in cap if r["instance"] == kind]
        c.plot([r["t_s"] for r in mine], [r["hbm_capacity_pct"] for r in mine], color=color, label=kind)
    c.set_xlabel("time (s)")
    c.set_ylabel("HBM capacity used (%)")
    c.set_ylim(0, 100)
    c.set_title("(c) HBM capacity over time (simulated PD run)")
    c.grid(alpha=0.3)
    c.legend()
    meta = pc.read(fig_dir / "meta.csv")[0]
    fig.suptitle(f"Figure 1 ({pc.source(fig_dir)}: cost model and simulator; dotted: paper's measurements): "
                 f"{meta.get('model', '')} on {meta.get('gpu', '')} under PD")
    return pc.save(fig, fig_dir, "fig1")

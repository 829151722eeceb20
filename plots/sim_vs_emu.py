"""Simulator vs emulator (results/sim_vs_emu/*.csv): metrics vs rate, and the top rate's timelines."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import matplotlib.pyplot as plt

_spec = importlib.util.spec_from_file_location("plots_common", Path(__file__).with_name("_common.py"))
pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pc)

SOURCE_COLOR = {"sim": "tab:blue", "sim-reserve-max": "tab:green", "emulated": "tab:red"}
SYSTEM_LINE = {"pd": "-", "adrenaline": "--"}
RATE_PANELS = [("mean_ttft_s", "mean TTFT (s)"), ("mean_tpot_ms", "mean TPOT (ms)"),
               ("decode_throughput_tok_s", "decode throughput (tok/s)"), ("mean_decode_batch", "mean decode batch")]
TIME_PANELS = [("pd", "decode_batch", "PD decode batch"), ("pd", "decode_kv_used_tokens", "PD decode KV (tokens)"),
               ("pd", "prefill_kv_used_tokens", "PD prefill KV (tokens)"),
               ("adrenaline", "decode_kv_used_tokens", "Adrenaline decode KV (tokens)")]  # fmt: skip


def plot(fig_dir: Path) -> Path:
    fig_dir = Path(fig_dir)
    rows = pc.read(fig_dir / "compare.csv")
    tl = pc.read(fig_dir / "timeline.csv")
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5))
    for system in sorted({r["system"] for r in rows}, key=lambda s: s != "pd"):
        for source in sorted({r["source"] for r in rows}):
            mine = sorted((r for r in rows if r["system"] == system and r["source"] == source),
                          key=lambda r: r["request_rate"])
            if not mine:
                continue
            for ax, (col, _) in zip(axes[0], RATE_PANELS):
                ax.plot([r["request_rate"] for r in mine], [r[col] for r in mine], SYSTEM_LINE.get(system, ":"),
                        marker="o", color=SOURCE_COLOR.get(source, "k"), label=f"{system}, {source}")
    for ax, (_, label) in zip(axes[0], RATE_PANELS):
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    top = max((r["request_rate"] for r in tl), default=math.nan)
    for ax, (system, col, label) in zip(axes[1], TIME_PANELS):
        for source in sorted({r["source"] for r in tl}):
            mine = [r for r in tl if r["system"] == system and r["source"] == source and r["request_rate"] == top]
            ax.plot([r["t_s"] for r in mine], [r[col] for r in mine], color=SOURCE_COLOR.get(source, "k"),
                    label=source, lw=1)
        ax.set_xlabel(f"time (s) at {top:g} req/s")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1][0].legend(fontsize=7)
    fig.suptitle("Simulator vs emulator (real SGLang control plane, modelled GPU time): "
                 "figure 5's setting (Llama-2 13B, A100-80GB, 1P1D, ShareGPT lengths)")
    return pc.save(fig, fig_dir, "sim_vs_emu")

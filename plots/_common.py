"""Helpers the figure scripts share: read a results CSV, the figure's meta row, a consistent style."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

SYSTEM_STYLE = {"pd": dict(color="tab:blue", marker="o", label="PD baseline"),
                "adrenaline": dict(color="tab:red", marker="s", label="Adrenaline")}  # fmt: skip


def read(path: Path) -> list[dict]:
    """Rows of a CSV with numeric-looking values converted to float (comment lines skipped)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    for r in rows:
        for k, v in r.items():
            try:
                r[k] = float(v)
            except (TypeError, ValueError):
                pass
    return rows


def source(fig_dir: Path) -> str:
    """'simulated' or 'measured' from meta.csv ('simulated' when absent)."""
    meta = Path(fig_dir) / "meta.csv"
    return str(read(meta)[0]["source"]) if meta.exists() else "simulated"


def save(fig, fig_dir: Path, name: str) -> Path:
    out = Path(fig_dir) / f"{name}.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out

"""Figure 9 from `results/fig9/*.csv` (written by experiments/fig9/run.py); reads only those files.

(a) executor decode-attention bandwidth as a fraction of the reference (measured copy, or HBM peak for
the modelled profile) vs SM share; (b) prefill slowdown vs SM share, alone and beside the executor, with
the compute roofline (1 / share); (c) the planner's executor share vs the TTFT SLO. The title says whether
the curves are measured or modelled.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _read(path: Path) -> tuple[dict[str, str], list[dict[str, float]]]:
    prov, lines = {}, []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            k, _, v = line[1:].partition(":")
            prov[k.strip()] = v.strip()
        elif line.strip():
            lines.append(line)
    rows = [{k: float(v) if v not in ("", "nan") else math.nan for k, v in r.items()} for r in csv.DictReader(lines)]
    return prov, rows


def plot(fig_dir: Path) -> Path:
    fig_dir = Path(fig_dir)
    prov, attn = _read(fig_dir / "attention.csv")
    _, prefill = _read(fig_dir / "prefill.csv")
    plan_prov, plans = _read(fig_dir / "planner.csv")
    fig, (ax_a, ax_p, ax_s) = plt.subplots(1, 3, figsize=(15, 4.4))

    shares = [r["sm_share"] for r in attn]
    ax_a.plot(shares, [r["frac_of_ref"] for r in attn], "o-", label="decode attention")
    ax_a.plot([0, 1], [0, attn[-1]["frac_of_ref"]], ":", color="gray", label="proportional to SMs")
    ax_a.axhline(1.0, color="k", lw=0.8, label="reference bandwidth")
    ax_a.plot([0.2], [0.6], "r*", ms=12, label="paper, A100: 20% SMs -> 60%")
    ax_a.set(xlabel="executor SM share", ylabel="bandwidth / reference", ylim=(0, 1.1), xlim=(0, 1.02),
             title="(a) executor attention bandwidth")  # fmt: skip
    ax_a.legend(fontsize=8, loc="lower right")

    for t in sorted({r["tokens"] for r in prefill}):
        rows = [r for r in prefill if r["tokens"] == t]
        line = ax_p.plot([r["sm_share"] for r in rows], [r["slowdown"] for r in rows], "o-", label=f"{t:.0f} tokens")
        contended = [(r["sm_share"], r["contended_slowdown"]) for r in rows if not math.isnan(r["contended_slowdown"])]
        if contended:
            ax_p.plot(*zip(*contended), "x--", color=line[0].get_color(), label=f"{t:.0f} tokens, beside executor")
    xs = sorted({r["sm_share"] for r in prefill})
    ax_p.plot(xs, [1 / x for x in xs], ":", color="gray", label="compute roofline (1 / share)")
    ax_p.set(xlabel="prefill SM share", ylabel="latency / latency on the whole GPU", yscale="log",
             title="(b) prefill slowdown")  # fmt: skip
    ax_p.legend(fontsize=8)

    slos = [r["ttft_slo_ms"] for r in plans]
    ax_s.step(slos, [r["executor_share"] for r in plans], where="post", marker="o", label="executor share")
    missed = [(r["ttft_slo_ms"], r["executor_share"]) for r in plans if r["slo_met"] < 0.5]
    if missed:
        ax_s.plot(*zip(*missed), "rx", ms=10, label="SLO not reachable")
    ax_s.set(xlabel="mean TTFT SLO (ms)", ylabel="executor SM share", ylim=(0, 1),
             title=f"(c) planner at {plan_prov.get('load', '?')}")  # fmt: skip
    ax_s.title.set_fontsize(9)
    ax_s.legend(fontsize=8)

    title = prov.get("title", prov.get("source", "unknown source"))
    fig.suptitle(f"Figure 9: prefill colocation, {prov.get('gpu', '?')}: {title}")
    fig.tight_layout()
    out = fig_dir / "fig9.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

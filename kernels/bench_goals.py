"""The issue's two goals, checked on benchmark rows (what a GPU run must report, pass or fail):

1. bandwidth: ours reaches >= 85% of the measured copy bandwidth at batch >= 32 and context >= 2048;
2. baseline: ours is never slower than SGLang's Triton kernel on the same shape.

On CPU the numbers are interpreter times and the verdicts mean nothing (the caller says so).
"""

from __future__ import annotations

import statistics

BANDWIDTH_GOAL = 0.85
GOAL_MIN_BATCH = 32
GOAL_MIN_CTX = 2048
OURS = "adrenaline"
BASELINE = "sglang_triton"


def _key(r: dict) -> tuple:
    return (r["model"], r["dtype"], int(r.get("page_size", 1)), r["batch"], r["ctx"])


def check_goals(rows: list[dict]) -> dict:
    """Per goal: the shapes it covers, the worst and median values, and a verdict (None: no shape covered)."""
    ours = {_key(r): r for r in rows if r["impl"] == OURS}
    big = [r for r in ours.values() if r["batch"] >= GOAL_MIN_BATCH and r["ctx"] >= GOAL_MIN_CTX]
    fracs = [r["frac_copy_bw"] for r in big]
    bandwidth = dict(
        shapes=len(big),
        min_frac_copy_bw=min(fracs, default=None),
        median_frac_copy_bw=statistics.median(fracs) if fracs else None,
        met=(min(fracs) >= BANDWIDTH_GOAL) if fracs else None,
    )
    pairs = [(ours[_key(r)], r) for r in rows if r["impl"] == BASELINE and _key(r) in ours]
    speedups = [b["time_us"] / o["time_us"] for o, b in pairs]  # > 1: ours faster
    slower = [
        dict(model=o["model"], dtype=o["dtype"], batch=o["batch"], ctx=o["ctx"], speedup=round(s, 3),
             **({"page_size": int(o["page_size"])} if int(o.get("page_size", 1)) != 1 else {}))
        for (o, _), s in zip(pairs, speedups)
        if s < 1.0
    ]
    baseline = dict(
        shapes=len(pairs),
        min_speedup_vs_sglang=min(speedups, default=None),
        median_speedup_vs_sglang=statistics.median(speedups) if speedups else None,
        slower_shapes=slower,
        met=(not slower) if pairs else None,
    )
    return dict(bandwidth=bandwidth, never_slower_than_sglang=baseline)


def format_goals(goals: dict) -> str:
    bw, bl = goals["bandwidth"], goals["never_slower_than_sglang"]
    lines = []
    if bw["shapes"]:
        lines.append(
            f"goal >= {BANDWIDTH_GOAL:.0%} of copy bandwidth at batch >= {GOAL_MIN_BATCH}, ctx >= {GOAL_MIN_CTX}: "
            f"{'MET' if bw['met'] else 'NOT MET'} (min {bw['min_frac_copy_bw']:.1%}, "
            f"median {bw['median_frac_copy_bw']:.1%}, {bw['shapes']} shapes)"
        )
    else:
        lines.append(f"goal bandwidth: no shape with batch >= {GOAL_MIN_BATCH} and ctx >= {GOAL_MIN_CTX}")
    if bl["shapes"]:
        lines.append(
            f"goal never slower than SGLang's Triton kernel: {'MET' if bl['met'] else 'NOT MET'} "
            f"(min speedup {bl['min_speedup_vs_sglang']:.2f}x, median {bl['median_speedup_vs_sglang']:.2f}x, "
            f"slower on {len(bl['slower_shapes'])} of {bl['shapes']} shapes)"
        )
    else:
        lines.append("goal vs SGLang: SGLang's kernel was not measured")
    return "\n".join(lines)

"""The numbers the issue asks for, computed from a step's files (used by the steps' status lines and by
tables.py for docs/perf.md; nothing here measures).

- colocation: the smallest executor SM share whose decode-attention bandwidth reaches 60% of the copy
  bandwidth (linear between profiled shares), and prefill's slowdown beside a fully loaded executor
  (contended / alone time on the same prefill share);
- offload: the decode-step ratio (M + N) / M for each N, against the 1.05 goal.
"""

from __future__ import annotations

import math
from pathlib import Path

FRACTION_GOAL = 0.6
STEP_RATIO_GOAL = 1.05


def share_for_fraction(points: list[tuple[float, float]], goal: float = FRACTION_GOAL) -> float | None:
    """Smallest share at which the (share, fraction) curve reaches `goal`, interpolated; None if never."""
    pts = sorted(points)
    prev = None
    for share, frac in pts:
        if frac >= goal:
            if prev is None or prev[1] >= goal:
                return share
            (s0, f0), (s1, f1) = prev, (share, frac)
            return s0 + (goal - f0) * (s1 - s0) / (f1 - f0)
        prev = (share, frac)
    return None


def colocation_verdicts(profile_dir: str | Path) -> dict:
    from adrenaline_sgl.colocation.profiles import load_profile

    prof = load_profile(profile_dir)
    curve = [(a.sm_share, a.frac_of_ref) for a in prof.attention]
    share = share_for_fraction(curve)
    slowdowns = {}
    for t in prof.token_counts:
        rows = [p for p in prof.prefill if p.tokens == t and not math.isnan(p.prefill_contended_ms)]
        if rows:
            slowdowns[str(t)] = {f"{p.sm_share:.4f}": round(p.prefill_contended_ms / p.prefill_ms, 3) for p in rows}
    worst = max((v for per in slowdowns.values() for v in per.values()), default=None)
    return {
        "share_for_60pct": None if share is None else round(share, 4),
        "frac_at_20pct": round(prof.attn_gbs(0.2) / prof.attention[0].ref_gbs, 4),
        "contended_slowdown_by_tokens_share": slowdowns,
        "contended_slowdown": worst,
        "contention_mode": prof.provenance.get("contention", "unknown"),
    }


def offload_verdicts(rows: list[dict], bound: int | None = None) -> dict:
    """Per N: step ratio and whether it meets the goal; `bound`: the scheduler's OB for this setting, if known
    (the goal applies to N <= bound)."""
    out = {}
    for r in rows:
        n = int(r["offloaded_rows"])
        if n == 0 or r.get("step_vs_local_only") in (None, ""):
            continue
        ratio = float(r["step_vs_local_only"])
        out[n] = {"ratio": ratio, "meets_1_05": ratio <= STEP_RATIO_GOAL,
                  "within_bound": None if bound is None else n <= bound}  # fmt: skip
    return out

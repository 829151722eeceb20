"""Print what the paper's 7B calibration data implies for the ShareGPT samples (`sim/workload_calibration.py`).

    python -m adrenaline_sgl.tools.workload_check
"""

from __future__ import annotations

import argparse

from adrenaline_sgl.sim.workload_calibration import (
    BAND_TOL,
    GPU,
    MODEL,
    PAPER_ATTN_SHARE,
    PAPER_BATCH,
    PAPER_KV_HBM_FRAC,
    attention_share,
    calibration_band,
    check,
    context_for_attention_share,
    kv_tokens_per_request,
)
from adrenaline_sgl.sim.workloads import MEASURED


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    lo, hi = calibration_band()
    print(f"{MODEL} on {GPU}, batch {PAPER_BATCH}: attention {PAPER_ATTN_SHARE:.1%} of decode time -> context "
          f"{context_for_attention_share():.0f} tokens; KV {PAPER_KV_HBM_FRAC:.1%} of HBM -> "
          f"{kv_tokens_per_request():.0f} tokens a request; band (+-{BAND_TOL:.0%}) {lo:.0f}..{hi:.0f}")  # fmt: skip
    for name in MEASURED:
        c = check(name)
        print(f"{name:>20}: prompt {c.mean_prompt_tokens:.0f}, output {c.mean_output_tokens:.0f}, in flight "
              f"{c.in_flight_tokens:.0f} (simple {c.simple_tokens:.0f}) tokens, attention {c.attn_share:.1%} at "
              f"batch {PAPER_BATCH} ({attention_share(c.simple_tokens):.1%} at simple): "
              f"{'within' if c.within_band else 'OUTSIDE'} the band")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

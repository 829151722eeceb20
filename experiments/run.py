"""`python -m experiments.run figN [ARGS]` or `python -m experiments.run all [ARGS]`.

Figures are discovered, not listed: every `experiments/figN/run.py` exposing `main(argv=None) -> int` is
one. `all` runs them in numeric order and prints each one's wall time; ARGS go to every figure whose run.py
sets `COMMON_ARGS = True` (the simulated ones), the others run with their own defaults.
"""

from __future__ import annotations

import importlib
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def figures() -> list[str]:
    """Names of the figures that have an experiments/figN/run.py, in numeric order."""
    found = [p.parent.name for p in HERE.glob("fig*/run.py") if re.fullmatch(r"fig\d+", p.parent.name)]
    return sorted(found, key=lambda name: int(name[3:]))


def run_one(fig: str, argv: list[str], *, from_all: bool = False) -> int:
    """Run one figure. Under `all`, ARGS reach only figures whose run.py sets `COMMON_ARGS = True` (they
    accept experiments.common's flags); the others run with their defaults, and a line says so."""
    module = importlib.import_module(f"experiments.{fig}.run")
    if from_all and argv and not getattr(module, "COMMON_ARGS", False):
        print(f"{fig}: runs without {' '.join(argv)} (its run.py does not take the common flags)", flush=True)
        argv = []
    return int(module.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    valid = figures()
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m experiments.run {{{','.join(valid)},all}} [ARGS]  (ARGS: figN --help)")
        return 0 if argv else 2
    fig, rest = argv[0], argv[1:]
    if fig != "all" and fig not in valid:
        print(f"error: unknown figure {fig!r}; valid: {', '.join(valid)}, all", file=sys.stderr)
        return 2
    status = 0
    for name in valid if fig == "all" else [fig]:
        start = time.perf_counter()
        rc = run_one(name, rest, from_all=fig == "all")
        print(f"{name}: exit {rc} in {time.perf_counter() - start:.1f} s", flush=True)
        status = status or rc
    return status


if __name__ == "__main__":
    raise SystemExit(main())

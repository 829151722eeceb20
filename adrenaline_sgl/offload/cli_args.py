"""argparse value types shared by the offload CLIs (check, bench, server): one-line range errors."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_in(name: str, lo: int, hi: int) -> Callable[[str], int]:
    """An argparse `type` accepting integers in [lo, hi]; the error names `--name` and the range."""

    def parse(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"--{name} must lie in [{lo}, {hi}], got {value}")
        return value

    return parse

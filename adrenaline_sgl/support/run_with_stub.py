"""`python -m adrenaline_sgl.support.run_with_stub MODULE [ARGS...]`: run MODULE as `__main__` with the
torchvision import stand-in active when no real torchvision is installed (CPU machines; see
torchvision_stub.py). For SGLang tools we start as subprocesses, e.g. `sglang.benchmark.serving`, whose
imports reach `torchvision.transforms`. Where a real torchvision exists this is plain `python -m MODULE`.
"""

from __future__ import annotations

import runpy
import sys

from adrenaline_sgl.support import torchvision_stub


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m adrenaline_sgl.support.run_with_stub MODULE [ARGS...]")
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]  # what MODULE's argparse sees, as under `python -m MODULE`
    torchvision_stub.install()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

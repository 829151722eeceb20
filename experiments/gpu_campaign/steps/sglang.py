"""Step sglang: the SGLang plugin's `gpu` tests (tests/sglang_ext -m gpu) with sglang carried as wheels.

The GPU machine has no sglang: the bundle carries sglang 0.5.23's wheel and the light dependencies that the
plugin's tests import (`wheels/sglang/`, see bundle.py). They are installed into a scratch folder put first
on PYTHONPATH for this step only, so the steps before never see sglang. Where the real `sgl_kernel` is
missing, the plugin's strict plain-torch stand-in (adrenaline_sgl/sglang_ext/cpu/sgl_kernel_standin.py) is
importable as `sgl_kernel`, as on the CPU demo. Tests that need Mooncake skip. Smoke mode, or a bundle
without those wheels: skipped with the reason.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from experiments.gpu_campaign.steps import common
from experiments.gpu_campaign.steps.tests import PER_TEST_TIMEOUT_S, junit_counts

SHIM = '''"""Written by experiments/gpu_campaign/steps/sglang.py: the plugin's sgl_kernel stand-in."""
from adrenaline_sgl.sglang_ext.cpu.sgl_kernel_standin import *  # noqa: F403
from adrenaline_sgl.sglang_ext.cpu.sgl_kernel_standin import __all__  # noqa: F401
'''


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parse_args(argv, __doc__.splitlines()[0])
    wheels = sorted((args.bundle / "wheels" / "sglang").glob("*.whl"))
    if args.smoke or not common.has_cuda():
        common.write_status(args.out, "skipped", "the plugin's gpu tests were not run", "no GPU")
        return 0
    if not wheels:
        common.write_status(args.out, "skipped", "the plugin's gpu tests were not run",
                            f"no sglang wheels in {args.bundle}/wheels/sglang (bundle.json says why)")
        return 0
    site = Path(tempfile.mkdtemp(prefix="gc-sglang-site-"))
    rc_pip = common.run([common.python(), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                         "--no-cache-dir", "--target", site, *wheels], args.remaining_s(10))  # fmt: skip
    if rc_pip != 0:
        common.write_status(args.out, "failed", "installing the carried sglang wheels failed", f"pip rc {rc_pip}")
        return 1
    shim_dir = site.parent / (site.name + "-shim")
    shim_dir.mkdir()
    env = dict(os.environ)
    import importlib.util

    real_kernel = importlib.util.find_spec("sgl_kernel") is not None
    if not real_kernel:
        (shim_dir / "sgl_kernel.py").write_text(SHIM)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(shim_dir), env.get("PYTHONPATH", "")])
    junit = args.out / "junit.xml"
    rc = common.run([common.python(), "-m", "pytest", "tests/sglang_ext", "-m", "gpu", "-v", "-rA",
                     "-p", "no:cacheprovider", f"--timeout={PER_TEST_TIMEOUT_S}", f"--junitxml={junit}"],
                    args.remaining_s(3), env=env)  # fmt: skip
    if not junit.is_file():
        common.write_status(args.out, "failed", f"pytest wrote no JUnit file (rc {rc})", "killed or crashed",
                            sgl_kernel="real" if real_kernel else "stand-in")  # fmt: skip
        return 1
    counts = junit_counts(junit)
    bad = counts["failed"] + counts["errors"]
    common.write_status(args.out, "ok" if rc == 0 and not bad else "failed",
                        ", ".join(f"{v} {k}" for k, v in counts.items()), "" if not bad else f"rc {rc}",
                        sgl_kernel="real" if real_kernel else "stand-in", **counts)  # fmt: skip
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Step tests: the `gpu`-marked tests of kernels, offload, colocation and the profiler tools, on the GPU.

One pytest run, verbose (the log keeps every finished test's outcome even if the step is killed), a JUnit
XML, 120 s per test at most. Smoke mode (no GPU: every one of these tests would skip) collects the same
selection instead, which checks the paths, markers and imports the GPU run depends on.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from experiments.gpu_campaign.steps import common

TEST_DIRS = ("tests/kernels", "tests/offload", "tests/colocation", "tests/tools")  # tools: the profilers
PER_TEST_TIMEOUT_S = 120


def junit_counts(path) -> dict[str, int]:
    """passed / failed / errors / skipped from a JUnit XML file (pytest's)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parse_args(argv, __doc__.splitlines()[0])
    base = [common.python(), "-m", "pytest", *TEST_DIRS, "-m", "gpu", "-p", "no:cacheprovider"]
    if args.smoke or not common.has_cuda():
        log = args.out / "collect.txt"
        with open(log, "w") as f:
            import subprocess

            proc = subprocess.run([*base, "--collect-only", "-q"], cwd=common.REPO_ROOT, stdout=f,
                                  stderr=subprocess.STDOUT, timeout=args.remaining_s(5))  # fmt: skip
        text = log.read_text()
        m = re.search(r"(\d+)/\d+ tests collected", text)
        collected = int(m.group(1)) if m else 0
        print(text[-2000:])
        if proc.returncode != 0 or not collected:
            common.write_status(args.out, "failed", f"collecting the gpu tests failed (rc {proc.returncode})")
            return 1
        common.write_status(args.out, "skipped", f"{collected} gpu tests collected, none run", "no GPU",
                            collected=collected)  # fmt: skip
        return 0
    junit = args.out / "junit.xml"
    rc = common.run([*base, "-v", "-rA", f"--timeout={PER_TEST_TIMEOUT_S}", f"--junitxml={junit}"],
                    args.remaining_s(5))  # fmt: skip
    if not junit.is_file():
        common.write_status(args.out, "failed", f"pytest wrote no JUnit file (rc {rc})", "killed or crashed")
        return 1
    counts = junit_counts(junit)
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    bad = counts["failed"] + counts["errors"]
    common.write_status(args.out, "ok" if rc == 0 and not bad else "failed", summary, "" if not bad else
                        f"{bad} tests failed or errored (rc {rc})", **counts)  # fmt: skip
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

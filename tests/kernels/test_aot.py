"""The real (non-interpreter) compiler accepts the decode kernel for Hopper, without spills, with the K/V
loads pipelined through cp.async and tensor-core MMAs for fp16: checked on CPU with triton's own ptxas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton


@pytest.mark.skipif(
    not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists(),
    reason="this triton wheel ships no ptxas",
)
def test_stage1_compiles_for_sm90():
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    cmd = [sys.executable, "-m", "adrenaline_kernels.aot", "--arch", "90", "--quick", "--dtypes", "float16"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("split_kv_stage1_kernel")]
    assert len(rows) == 1, out.stdout
    _, dtype, group, d, bn, warps, stages, regs, spill, smem, cp_async, mma = rows[0]
    assert (dtype, group, d) == ("float16", "4", "128")
    assert 0 < int(regs) <= 128, f"{regs} registers/thread limits occupancy"
    assert int(spill) == 0, "register spills to local memory"
    assert int(smem) < 100 * 1024
    assert cp_async == "True" and mma == "True"

"""Importing the colocation package imports no CUDA-only module (checked in a fresh interpreter)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["arch", "config", "fake", "green_context", "manager", "mps", "none", "partitioner", "planner", "profiles",
           "replan"]
CUDA_ONLY = ("cuda", "cupy", "pynvml", "sgl_kernel", "flashinfer", "nvidia")


def test_no_cuda_module_and_no_torch_at_import_time():
    code = (
        "import sys, json\n"
        + "".join(f"import adrenaline_sgl.colocation.{m}\n" for m in MODULES)
        + "import adrenaline_sgl.colocation\n"
        + "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    bad = [m for m in loaded if m.split(".")[0] in CUDA_ONLY]
    assert not bad, f"CUDA-only modules imported at import time: {bad}"
    assert "torch" not in loaded, "the colocation package should not even import torch at import time"

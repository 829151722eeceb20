"""The pinned SGLang and its router import in this venv (a fresh interpreter, torchvision stand-in on)."""

import subprocess
import sys

_SCRIPT = """
from adrenaline_sgl.support import torchvision_stub
torchvision_stub.install()
import sglang.srt.disaggregation.decode
import sglang.srt.disaggregation.prefill
import sglang_router
from importlib.metadata import version
print(version("sglang"), version("sglang-router"))
"""


def test_sglang_pd_modules_and_router_import():
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.split()[-2:] == ["0.5.23", "0.3.2"]

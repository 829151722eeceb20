"""Package-level contract: interpreter auto-enable on CPU and the exported API."""

from __future__ import annotations

import os
import subprocess
import sys

import adrenaline_kernels
import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is enabled only where CUDA is absent")
def test_import_enables_interpreter_and_explains_a_late_import():
    """A fresh process without TRITON_INTERPRET: importing the package turns the interpreter on. Here triton
    is imported first on purpose (its helpers are then compiled-mode): a launch must say what went wrong."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = """
import os, torch, triton
import adrenaline_kernels as k
from adrenaline_kernels.mode import interpreting
print(os.environ.get("TRITON_INTERPRET"), interpreting())
try:
    k.merge_state(torch.zeros(1, 1, 16), torch.zeros(1, 1), torch.zeros(1, 1, 16), torch.zeros(1, 1))
except RuntimeError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["1", "True"]
    assert "import adrenaline_kernels (or set TRITON_INTERPRET=1) before triton" in lines[1]


def test_public_api():
    for name in (
        "decode_attention", "merge_state", "append_kv", "DecodeAttentionWrapper", "DecodeAttentionPlan",
        "decode_attention_ref", "merge_state_ref", "append_kv_ref",
    ):  # fmt: skip
        assert callable(getattr(adrenaline_kernels, name)), name
        assert name in adrenaline_kernels.__all__

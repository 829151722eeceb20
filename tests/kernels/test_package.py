"""Package-level contract: interpreter auto-enable on CPU and the exported API."""

from __future__ import annotations

import os
import subprocess
import sys

import adrenaline_kernels
import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is enabled only where CUDA is absent")
def test_import_enables_interpreter_without_cuda():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import os, adrenaline_kernels as k; from adrenaline_kernels.decode import interpreting;"
        "print(os.environ.get('TRITON_INTERPRET'), interpreting())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "True"]


def test_public_api():
    for name in (
        "decode_attention", "merge_state", "append_kv", "DecodeAttentionWrapper", "DecodeAttentionPlan",
        "decode_attention_ref", "merge_state_ref", "append_kv_ref",
    ):  # fmt: skip
        assert callable(getattr(adrenaline_kernels, name)), name
        assert name in adrenaline_kernels.__all__

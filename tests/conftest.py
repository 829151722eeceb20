"""Test-wide set-up. The one place that decides the Triton mode for tests.

`TRITON_INTERPRET=1` must be in the environment before any module that defines `@triton.jit` kernels is
imported (else triton fails with "0 active drivers" on a CPU machine). pytest imports this file before any
test module, so setting it here, at import time, is early enough.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# `import sglang` needs torchvision importable; on CPU machines it is not installed (see the module).
from adrenaline_sgl.support import torchvision_stub  # noqa: E402

torchvision_stub.install()


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def smollm2_dir():
    """The converted SmolLM2-135M checkpoint (bf16), made once per machine."""
    from adrenaline_sgl.support.smollm2 import checkpoint_dir

    return checkpoint_dir("bfloat16")

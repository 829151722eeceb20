"""SGLang plugin entry point (`sglang.srt.plugins` group, see pyproject.toml).

SGLang calls `load()` in every process it starts (launcher, scheduler, detokenizer). It must stay cheap
and must not import CUDA-only modules.
"""

import os

SUPPORTED_SGLANG_VERSION = "0.5.23"


def load() -> None:
    """Check the SGLang version, then apply what this process needs."""
    from importlib.metadata import version

    found = version("sglang")
    if found != SUPPORTED_SGLANG_VERSION:
        raise RuntimeError(
            f"adrenaline_sgl supports sglang=={SUPPORTED_SGLANG_VERSION} only, found sglang=={found}; "
            f"install the pinned version (pip install -c .ci/constraints.txt sglang=={SUPPORTED_SGLANG_VERSION})"
        )
    # Development/test support for real servers on CPU machines (docs/sglang.md); off unless asked for.
    if os.environ.get("SGLANG_USE_CPU_ENGINE") == "1":
        from adrenaline_sgl.sglang_ext.cpu import fixes

        fixes.apply()

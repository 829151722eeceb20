"""Which Triton mode the kernels run in, and a clear error when the process mixed the two.

Under the interpreter every `@triton.jit` function must be an interpreted one, triton's own helpers too
(`tl.cdiv`, `tl.max`, `tl.sum` are `@triton.jit` functions created at `import triton`). If a CPU process
imported triton before TRITON_INTERPRET=1 was set, our kernels are interpreted but those helpers are not,
and the first launch dies deep inside the interpreter with "Cannot call @triton.jit'd outside of the scope
of a kernel". `check_triton_mode()` turns that into one actionable line before any launch.
"""

from __future__ import annotations

import triton.language as tl

from ._jit_decode import split_kv_stage1_kernel


def _is_interpreted(fn: object) -> bool:
    return type(fn).__name__ == "InterpretedFunction"


def interpreting() -> bool:
    """True when our kernels were built for the Triton interpreter (TRITON_INTERPRET=1 at import)."""
    return _is_interpreted(split_kv_stage1_kernel)


def check_triton_mode(fn: str) -> None:
    if interpreting() != _is_interpreted(tl.cdiv):
        raise RuntimeError(
            f"{fn}: triton was imported before TRITON_INTERPRET was set, so its own helpers and our kernels run in "
            "different modes; import adrenaline_kernels (or set TRITON_INTERPRET=1) before triton or sglang"
        )

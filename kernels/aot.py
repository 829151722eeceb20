"""Compile the kernels for an NVIDIA architecture without a GPU, and report their resource use.

The Triton interpreter (all CPU tests) accepts code that the real compiler rejects (tl.dot shape limits,
type mismatches in loop-carried values) and says nothing about registers, spills or pipelining. This
compiles the real thing with the ptxas bundled in the triton wheel, with the argument specializations a
real launch gets (pointers 16-byte aligned, strides divisible by 16), and reads the cubin's resource use:

    python -m adrenaline_kernels.aot --arch 90            # Hopper (H100/H200); 80 for A100

NOTE: compiling needs a process without the interpreter (under TRITON_INTERPRET=1 even triton's own
`tl.cdiv` is an interpreted function), so `main()` re-runs itself with TRITON_INTERPRET=0 when needed.

Columns: registers per thread, local memory (spills; want 0), static shared memory plus Triton's dynamic
shared memory, whether the K/V loads became asynchronous copies (cp.async: software pipelining took).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton

TORCH_TO_TRITON = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


@dataclass(frozen=True)
class AotReport:
    kernel: str
    constexprs: dict
    num_warps: int
    num_stages: int
    registers: int
    local_bytes: int  # spills
    shared_bytes: int  # Triton's dynamic shared memory
    uses_cp_async: bool
    uses_mma: bool


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([str(cuobjdump), "-res-usage", str(path)], capture_output=True, text=True, timeout=60)
    m = re.search(r"REG:(\d+).*?LOCAL:(\d+)", out.stdout)
    if m is None:
        raise RuntimeError(f"aot: cannot read cuobjdump -res-usage output: {out.stdout[-300:]} {out.stderr[-300:]}")
    return int(m.group(1)), int(m.group(2))


def compile_kernel(fn, arg_types: dict[str, str], constexprs: dict, *, arch: int, num_warps: int, num_stages: int):
    """arg_types: Triton type per runtime argument ('*fp16', 'i32', 'fp32'); integers default to i32."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names
    sig = {n: "constexpr" if n in constexprs else arg_types.get(n, "i32") for n in names}
    # What a real launch specializes: aligned pointers and integer arguments divisible by 16.
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if sig[n][0] == "*" or n.startswith("stride")}
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in constexprs.items()}, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps,
                                                                                   num_stages=num_stages))  # fmt: skip
    regs, local = _resource_usage(compiled.asm["cubin"])
    ptx = compiled.asm["ptx"]
    return AotReport(
        fn.__name__, dict(constexprs), num_warps, num_stages, regs, local, int(compiled.metadata.shared),
        "cp.async" in ptx, "mma" in ptx,
    )  # fmt: skip


def stage1_report(
    dtype: str, group: int, head_dim: int, *, arch: int = 90, block_n: int = 64, num_warps: int = 4, num_stages: int = 2
) -> AotReport:
    from . import _jit_decode as jd
    from .mode import interpreting
    from .splits import block_h_for, cdiv, next_power_of_2

    if interpreting():
        raise RuntimeError("aot: the kernels were imported for the interpreter; run with TRITON_INTERPRET=0")
    t = TORCH_TO_TRITON[dtype]
    block_h = block_h_for(group)
    arg_types = {"Q": f"*{t}", "K_Buffer": f"*{t}", "V_Buffer": f"*{t}", "kv_indptr": "*i32", "kv_indices": "*i32",
                 "num_splits": "*i32", "Mid_O": "*fp32", "Mid_Lse": "*fp32", "sm_scale": "fp32"}  # fmt: skip
    block_d = max(16, next_power_of_2(head_dim))
    constexprs = dict(GROUP=group, HEAD_TILES=cdiv(group, block_h), HEAD_DIM=head_dim, BLOCK_H=block_h,
                      BLOCK_D=block_d, BLOCK_N=block_n, DOT_FP32=dtype == "float32")  # fmt: skip
    return compile_kernel(
        jd.split_kv_stage1_kernel, arg_types, constexprs, arch=arch, num_warps=num_warps, num_stages=num_stages
    )


def small_kernel_reports(*, arch: int = 90) -> list[AotReport]:
    """Stage 2, merge_state and append_kv at D=128 (fp16 outputs, bf16 pool)."""
    from . import _jit_decode as jd
    from . import _jit_state as js

    stage2 = {"Mid_O": "*fp32", "Mid_Lse": "*fp32", "kv_indptr": "*i32", "num_splits": "*i32", "Out": "*fp16",
              "Out_Lse": "*fp32"}  # fmt: skip
    merge = {n: "*fp16" for n in ("O_A", "O_B", "Out")} | {n: "*fp32" for n in ("Lse_A", "Lse_B", "Out_Lse")}
    append = {n: "*bf16" for n in ("K_Buffer", "V_Buffer", "K_New", "V_New")} | {"slots": "*i64"}
    d = dict(HEAD_DIM=128, BLOCK_D=128)
    return [
        compile_kernel(jd.split_kv_stage2_kernel, stage2, d | dict(BLOCK_N=64), arch=arch, num_warps=1, num_stages=2),
        compile_kernel(js.merge_state_kernel, merge, d, arch=arch, num_warps=1, num_stages=2),
        compile_kernel(js.append_kv_kernel, append, d, arch=arch, num_warps=1, num_stages=2),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m adrenaline_kernels.aot", description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 Hopper, 80 Ampere)")
    p.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16", "float32"], choices=list(TORCH_TO_TRITON))
    p.add_argument("--quick", action="store_true", help="one configuration per dtype (a smoke check)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":  # see the NOTE in the module docstring
        env = dict(os.environ, TRITON_INTERPRET="0")
        cmd = [sys.executable, "-m", "adrenaline_kernels.aot", *(sys.argv[1:] if argv is None else argv)]
        return subprocess.run(cmd, env=env, timeout=600).returncode
    print(f"{'kernel':24} {'dtype':8} {'group':>5} {'D':>4} {'BN':>4} {'warps':>5} {'stages':>6} "
          f"{'regs':>5} {'spill_B':>7} {'smem_B':>7} cp.async mma")  # fmt: skip
    for dtype in args.dtypes:
        shapes = ((4, 128),) if args.quick else ((1, 128), (4, 128), (3, 64), (8, 128))
        configs = ((64, 4, 2),) if args.quick else ((64, 4, 2), (64, 4, 3), (128, 8, 2))
        for group, d in shapes:
            for bn, nw, ns in configs:
                r = stage1_report(dtype, group, d, arch=args.arch, block_n=bn, num_warps=nw, num_stages=ns)
                print(f"{r.kernel:24} {dtype:8} {group:>5} {d:>4} {bn:>4} {nw:>5} {ns:>6} {r.registers:>5} "
                      f"{r.local_bytes:>7} {r.shared_bytes:>7} {r.uses_cp_async!s:>8} {r.uses_mma}")  # fmt: skip
    for r in small_kernel_reports(arch=args.arch):
        print(f"{r.kernel:24} {'-':8} {'-':>5} {128:>4} {'-':>4} {r.num_warps:>5} {r.num_stages:>6} {r.registers:>5} "
              f"{r.local_bytes:>7} {r.shared_bytes:>7} {r.uses_cp_async!s:>8} {r.uses_mma}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Environment for SGLang server processes on a CPU machine (development and test support).

`server_env(base_env, support_dir)` returns the environment the launcher gives to every SGLang server it
starts (and that SGLang passes on to its spawned scheduler and detokenizer processes):

- `SGLANG_USE_CPU_ENGINE=1`: SGLang's CPU engine path; also switches on the plugin's CPU fixes (`fixes.py`).
- `PYTHONPATH` starts with `support_dir`, into which `write_support_dir()` writes two shims:
  `sgl_kernel.py` (re-exports the strict stand-in, `sgl_kernel_standin.py`) and `sitecustomize.py`
  (activates the torchvision import stand-in before anything imports sglang).

Both shims live only in that folder (a run folder of the launcher), never in site-packages, and
`write_support_dir()` refuses to run where a real `sgl_kernel` or `sitecustomize` is importable.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

CPU_ENGINE_ENV = "SGLANG_USE_CPU_ENGINE"

_SGL_KERNEL_SHIM = '''"""Written by adrenaline_sgl/sglang_ext/cpu/server_env.py: strict sgl_kernel stand-in (CPU)."""
from adrenaline_sgl.sglang_ext.cpu.sgl_kernel_standin import *  # noqa: F403
from adrenaline_sgl.sglang_ext.cpu.sgl_kernel_standin import __all__  # noqa: F401
'''

_SITECUSTOMIZE_SHIM = '''"""Written by adrenaline_sgl/sglang_ext/cpu/server_env.py: torchvision stand-in (CPU)."""
from adrenaline_sgl.support import torchvision_stub

torchvision_stub.install()
'''


def _found_elsewhere(name: str, support_dir: Path) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    return None if Path(spec.origin).resolve().parent == support_dir.resolve() else spec.origin


def write_support_dir(support_dir: str | os.PathLike) -> Path:
    """Write the two shims into `support_dir` (created if needed) and return it."""
    folder = Path(support_dir)
    for name in ("sgl_kernel", "sitecustomize"):
        origin = _found_elsewhere(name, folder)
        if origin is not None:
            raise RuntimeError(
                f"a real `{name}` is importable here ({origin}); the CPU support shims must not shadow it. "
                "Run without cpu_support (cluster config `cpu_support: false`) on machines with native kernels"
            )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sgl_kernel.py").write_text(_SGL_KERNEL_SHIM)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE_SHIM)
    return folder


def server_env(base_env: dict[str, str], support_dir: str | os.PathLike) -> dict[str, str]:
    """`base_env` plus the CPU engine switch and `support_dir` first on PYTHONPATH (a new dict).

    Pass an absolute `support_dir` for processes that may change directory."""
    env = dict(base_env)
    env[CPU_ENGINE_ENV] = "1"
    parts = [str(support_dir)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


if __name__ == "__main__":  # for nodes started by hand: python -m adrenaline_sgl.sglang_ext.cpu.server_env DIR
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m adrenaline_sgl.sglang_ext.cpu.server_env SUPPORT_DIR")
    print(write_support_dir(sys.argv[1]))

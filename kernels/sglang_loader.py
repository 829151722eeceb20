"""SGLang's own Triton decode kernel as a benchmark baseline, also where `import sglang` cannot work.

`sglang/kernels/ops/attention/decode_attention.py` needs only torch, triton, its sibling `score_mod.py`
and three helpers from `sglang.srt` (`environ.envs`, `utils.get_device_core_count`, `utils.is_hip`/
`is_gfx*`). But `sglang.srt.utils` pulls in some 30 packages (transformers, zmq, fastapi, IPython...), none
of them on the GPU measurement machine. So when the normal import fails, this module executes the kernel
files themselves (`decode_attention.py`, `score_mod.py`, `metadata.py`, copied unchanged from the sglang
wheel; see docs/perf.md for how to carry them) with a shim for those helpers: CUDA (not ROCm), default
environment flags. The shim is put in `sys.modules` only while the files execute, then removed again.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch

KERNEL_FILES = ("score_mod.py", "metadata.py", "decode_attention.py")
ENV_SRC = "ADRENALINE_SGLANG_KERNEL_SRC"
_PKG = "sglang.kernels.ops.attention"


@dataclass(frozen=True)
class SGLangDecodeKernel:
    decode_attention_fwd: object  # sglang's decode_attention_fwd(q, k, v, o, kv_indptr, kv_indices, ...)
    get_num_kv_splits_triton: object  # sglang's split heuristic kernel (triton_backend uses it)
    origin: str  # "sglang" (normal import) or "files:<dir>" (standalone)


def installed_kernel_dir() -> Path | None:
    """Where the installed sglang keeps its attention kernels, found without importing sglang."""
    try:
        spec = importlib.util.find_spec("sglang")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "kernels" / "ops" / "attention"
    return path if (path / "decode_attention.py").is_file() else None


def load(src_dir: str | os.PathLike | None = None, *, standalone: bool = False) -> SGLangDecodeKernel:
    """Import SGLang's kernel normally; if that fails (or `standalone`), execute its files from `src_dir`
    (default: env ADRENALINE_SGLANG_KERNEL_SRC, else the installed sglang's folder). Raises ImportError
    with the reason when neither works."""
    if not standalone:
        try:
            dec = importlib.import_module(f"{_PKG}.decode_attention")
            meta = importlib.import_module(f"{_PKG}.metadata")
            return SGLangDecodeKernel(dec.decode_attention_fwd, meta.get_num_kv_splits_triton, "sglang")
        except Exception as exc:  # noqa: BLE001 - any failure of the full import falls back to the files
            first_error = f"{type(exc).__name__}: {exc}"
    else:
        first_error = "standalone requested"
    src = src_dir or os.environ.get(ENV_SRC) or installed_kernel_dir()
    if src is None:
        raise ImportError(f"sglang kernel unavailable ({first_error}); no kernel files (set {ENV_SRC})")
    src = Path(src)
    missing = [f for f in KERNEL_FILES if not (src / f).is_file()]
    if missing:
        raise ImportError(f"sglang kernel unavailable ({first_error}); {src} lacks {', '.join(missing)}")
    return _load_files(src)


STANDALONE_ENV = "ADRENALINE_SGLANG_KERNEL_STANDALONE"


@functools.cache
def load_default() -> SGLangDecodeKernel:
    """`load()` once per process: re-executing the files would make new kernel objects, each compiled anew.
    With env ADRENALINE_SGLANG_KERNEL_STANDALONE=1 the files are run even where sglang imports (the GPU
    campaign sets it, so its CPU rehearsal takes the path the GPU machine takes)."""
    return load(standalone=os.environ.get(STANDALONE_ENV) == "1")


class _EnvFlag:
    def __init__(self, value):
        self._value = value

    def get(self):
        return self._value


class _Envs:
    """Every SGLANG_* flag at its default for the decode path: off / unset."""

    def __getattr__(self, name: str) -> _EnvFlag:
        return _EnvFlag(1.0 if name == "SGLANG_FORCE_LEAN_GRID_CU_MULT" else False)


def _shim_modules() -> dict[str, types.ModuleType]:
    def core_count(device_id: int = 0) -> int:
        return torch.cuda.get_device_properties(device_id).multi_processor_count if torch.cuda.is_available() else 0

    environ = types.ModuleType("sglang.srt.environ")
    environ.envs = _Envs()  # type: ignore[attr-defined]
    utils = types.ModuleType("sglang.srt.utils")
    utils.get_device_core_count = core_count  # type: ignore[attr-defined]
    utils.is_hip = lambda: False  # type: ignore[attr-defined]
    utils.is_gfx95_supported = lambda: False  # type: ignore[attr-defined]
    utils.is_gfx1250_supported = lambda: False  # type: ignore[attr-defined]
    mods = {"sglang.srt.environ": environ, "sglang.srt.utils": utils}
    for pkg in ("sglang", "sglang.srt", "sglang.kernels", "sglang.kernels.ops", _PKG):
        mod = types.ModuleType(pkg)
        mod.__path__ = []  # type: ignore[attr-defined]
        mods[pkg] = mod
    return mods


def _load_files(src: Path) -> SGLangDecodeKernel:
    shims = _shim_modules()
    saved = {name: sys.modules.get(name) for name in [*shims, *(f"{_PKG}.{f[:-3]}" for f in KERNEL_FILES)]}
    loaded = {}
    try:
        sys.modules.update(shims)
        for fname in KERNEL_FILES:  # score_mod first: decode_attention imports it
            name = f"{_PKG}.{fname[:-3]}"
            spec = importlib.util.spec_from_file_location(name, src / fname)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
            loaded[fname] = mod
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return SGLangDecodeKernel(
        loaded["decode_attention.py"].decode_attention_fwd,
        loaded["metadata.py"].get_num_kv_splits_triton,
        f"files:{src}",
    )

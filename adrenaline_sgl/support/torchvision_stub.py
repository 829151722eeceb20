"""Import-only stand-in for `torchvision` on CPU machines (development and test support).

Why: PyPI's torchvision wheels link a CUDA torch; next to the CPU torch 2.13 they fail to import, and an
installed-but-broken torchvision breaks `import sglang`. Not installing it is not enough either:
`sglang.srt.configs` imports `torchvision.transforms` at import time (through the InternVL helpers), and
transformers 5.x probes `torchvision` with `find_spec` and then imports submodules such as
`torchvision.io`. So the CPU stack gets a meta-path finder that fabricates `torchvision` and every
`torchvision.*` submodule with placeholder attributes, plus an `InterpolationMode` enum.

Rules:
- `install()` does nothing when a real torchvision can be found: this never shadows a real install.
- Only our code and tests call `install()` (conftest, the CPU server bootstrap); nothing named
  `torchvision` is ever installed into site-packages.
- Placeholders make *imports* work. Using one (calling it, instantiating it) raises a RuntimeError that
  says torchvision is absent, so a vision code path can never silently run on fake transforms.
"""

from __future__ import annotations

import enum
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

_ROOT = "torchvision"
_MESSAGE = (
    "torchvision is not installed on this CPU machine; adrenaline_sgl's import stand-in only makes "
    "imports succeed. Install a torchvision that matches your torch to use vision features."
)


class InterpolationMode(enum.Enum):
    """Mirror of torchvision.transforms.InterpolationMode (values as in torchvision)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class _PlaceholderMeta(type):
    # Class-level attribute access (e.g. `SomeEnum.MEMBER`) yields another placeholder, so module-level
    # constants built from torchvision names still import.
    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"{cls.__qualname__}: {_MESSAGE}")


def _placeholder(qualname: str) -> type:
    return _PlaceholderMeta(qualname.rsplit(".", 1)[-1], (), {"__qualname__": qualname})


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []  # every stub module is a package, so any submodule imports
        module.__version__ = "0.0.0+adrenaline-stub"
        module.__adrenaline_stub__ = True
        if spec.name.endswith(".transforms") or spec.name.endswith(".transforms.v2"):
            module.InterpolationMode = InterpolationMode
        return module

    def exec_module(self, module) -> None:
        return None


class _StubFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == _ROOT or fullname.startswith(_ROOT + "."):
            return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)
        return None


def _real_torchvision_present() -> bool:
    if any(isinstance(f, _StubFinder) for f in sys.meta_path):
        return False
    return importlib.util.find_spec(_ROOT) is not None


def is_installed() -> bool:
    """True when the stand-in (not a real torchvision) answers `import torchvision`."""
    return any(isinstance(f, _StubFinder) for f in sys.meta_path)


def install() -> bool:
    """Put the stand-in on `sys.meta_path` unless a real torchvision exists. Returns True if active."""
    if is_installed():
        return True
    if _real_torchvision_present():
        return False
    sys.meta_path.append(_StubFinder())
    return True

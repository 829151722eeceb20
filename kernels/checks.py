"""Input checks shared by the wrappers: every failure is one ValueError line naming the argument, what was
expected and what came. They run before any Triton launch, so bad input never crashes inside a kernel."""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def check_tensor(
    fn: str,
    name: str,
    t: object,
    *,
    shape: tuple[int | None, ...],
    dtypes: tuple[torch.dtype, ...],
    device: torch.device | None = None,
    last_dim_contiguous: bool = True,
) -> None:
    """shape: expected sizes, None for "any"; its length is the expected rank."""
    require(isinstance(t, torch.Tensor), f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    assert isinstance(t, torch.Tensor)
    want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    require(t.dim() == len(shape), f"{fn}: {name} must have rank {len(shape)} {want}, got shape {list(t.shape)}")
    ok = all(s is None or s == got for s, got in zip(shape, t.shape))
    require(ok, f"{fn}: {name} must have shape {want}, got {list(t.shape)}")
    names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
    require(t.dtype in dtypes, f"{fn}: {name} dtype must be one of ({names}), got {str(t.dtype).replace('torch.', '')}")
    if device is not None:
        require(t.device == device, f"{fn}: {name} must be on {device} like the other inputs, got {t.device}")
    if last_dim_contiguous and t.dim() > 0 and t.shape[-1] > 1:
        require(t.stride(-1) == 1, f"{fn}: {name} must be contiguous in its last dim, got strides {t.stride()}")


def check_same_dtype(fn: str, **tensors: torch.Tensor) -> None:
    dtypes = {name: t.dtype for name, t in tensors.items()}
    first = next(iter(dtypes.values()))
    if any(d != first for d in dtypes.values()):
        got = ", ".join(f"{n}={str(d).replace('torch.', '')}" for n, d in dtypes.items())
        raise ValueError(f"{fn}: {', '.join(dtypes)} must share one dtype, got {got}")

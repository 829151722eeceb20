"""What the colocation profiler times: Llama-shaped prefill layers with random weights, our decode
attention kernel at a fixed batch and context, and a device-to-device copy (the bandwidth reference).

Every workload has `run()` (enqueue one call on the current stream) and, for bandwidth, `bytes_moved`.
`time_ms` times on a given stream with CUDA events (host clock on CPU) and returns the median.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LlamaLayerShape:
    hidden: int = 4096  # Llama-2-7B
    heads: int = 32
    kv_heads: int = 32
    head_dim: int = 128
    ffn: int = 11008

    def __post_init__(self):
        if self.heads % self.kv_heads or self.hidden <= 0 or self.ffn <= 0 or self.head_dim <= 0:
            raise ValueError(f"bad layer shape {self}: heads must be a multiple of kv_heads, sizes > 0")


def import_kernels():
    """`adrenaline_kernels`, installed or straight from the repo's kernels/ folder (the GPU machine runs
    from a plain checkout, where the package is not installed under that name)."""
    try:
        return importlib.import_module("adrenaline_kernels")
    except ImportError:
        init = REPO_ROOT / "kernels" / "__init__.py"
        spec = importlib.util.spec_from_file_location(
            "adrenaline_kernels", init, submodule_search_locations=[str(init.parent)]
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load adrenaline_kernels from {init}") from None
        module = importlib.util.module_from_spec(spec)
        sys.modules["adrenaline_kernels"] = module
        spec.loader.exec_module(module)
        return module


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype) * weight


class PrefillLayers:
    """`layers` Llama layers over one prompt of `tokens` tokens (random weights, no RoPE: it costs
    little and does not change the shape of the work)."""

    def __init__(self, tokens: int, layers: int, shape: LlamaLayerShape, device: str, dtype: torch.dtype,
                 weights: list[dict[str, torch.Tensor]] | None = None):  # fmt: skip
        g = torch.Generator(device="cpu").manual_seed(0)
        s, self.shape, self.tokens = shape, shape, tokens

        def w(*size):
            return (torch.randn(*size, generator=g) / math.sqrt(size[-1])).to(device=device, dtype=dtype)

        qkv_out = (s.heads + 2 * s.kv_heads) * s.head_dim
        self.weights = weights or [
            dict(
                norm1=torch.ones(s.hidden, device=device, dtype=dtype),
                qkv=w(qkv_out, s.hidden),  # [out, in]
                o=w(s.hidden, s.heads * s.head_dim),
                norm2=torch.ones(s.hidden, device=device, dtype=dtype),
                gate_up=w(2 * s.ffn, s.hidden),
                down=w(s.hidden, s.ffn),
            )
            for _ in range(layers)
        ]
        self.x = torch.randn(tokens, s.hidden, generator=g).to(device=device, dtype=dtype)  # [T, hidden]

    def run(self) -> torch.Tensor:
        s, t, x = self.shape, self.tokens, self.x
        for lw in self.weights:
            qkv = F.linear(_rms_norm(x, lw["norm1"]), lw["qkv"])  # [T, (Hq + 2 Hkv) D]
            q, k, v = qkv.split([s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim], dim=-1)
            q = q.view(t, s.heads, s.head_dim).transpose(0, 1)  # [Hq, T, D]
            k = k.view(t, s.kv_heads, s.head_dim).transpose(0, 1)  # [Hkv, T, D]
            v = v.view(t, s.kv_heads, s.head_dim).transpose(0, 1)
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=s.heads != s.kv_heads)
            x = x + F.linear(attn.transpose(0, 1).reshape(t, -1), lw["o"])  # [T, hidden]
            gate, up = F.linear(_rms_norm(x, lw["norm2"]), lw["gate_up"]).chunk(2, dim=-1)  # [T, ffn] each
            x = x + F.linear(F.silu(gate) * up, lw["down"])
        return x


class DecodeAttention:
    """One decode-attention call (one layer) for `batch` requests of `context` KV tokens each. `plan(num_sms)`
    plans for a partition's SM count (once per partition), `run()` is one call. impl "triton":
    adrenaline_kernels; "torch": its plain-torch reference (CPU smoke runs)."""

    def __init__(self, batch: int, context: int, shape: LlamaLayerShape, device: str, dtype: torch.dtype,
                 impl: str = "triton"):  # fmt: skip
        if impl not in ("triton", "torch"):
            raise ValueError(f"impl must be 'triton' or 'torch', got {impl!r}")
        self.kernels, self.impl, self.shape, self.dtype = import_kernels(), impl, shape, dtype
        slots = batch * context
        g = torch.Generator(device="cpu").manual_seed(1)
        self.q = torch.randn(batch, shape.heads, shape.head_dim, generator=g).to(device, dtype)  # [B, Hq, D]
        self.k = torch.randn(slots, shape.kv_heads, shape.head_dim, generator=g).to(device, dtype)  # [slots, Hkv, D]
        self.v = torch.randn(slots, shape.kv_heads, shape.head_dim, generator=g).to(device, dtype)
        self.kv_indptr = (torch.arange(batch + 1, dtype=torch.int32) * context).to(device)  # [B + 1]
        self.kv_indices = torch.randperm(slots, generator=g).to(device=device, dtype=torch.int32)  # paged slots
        elt = torch.finfo(dtype).bits // 8
        # K and V read once, q read and o written once (lse and the split workspace are small)
        kv_elems, qo_elems = 2 * slots * shape.kv_heads * shape.head_dim, 2 * batch * shape.heads * shape.head_dim
        self.bytes_moved = elt * (kv_elems + qo_elems)
        self._wrapper = None

    def plan(self, num_sms: int | None) -> DecodeAttention:
        if self.impl == "triton":
            s = self.shape
            self._wrapper = self.kernels.DecodeAttentionWrapper()
            self._wrapper.plan(self.kv_indptr, self.kv_indices, s.heads, s.kv_heads, s.head_dim, self.dtype,
                               num_sms=num_sms)  # fmt: skip
        return self

    def run(self):
        if self.impl == "torch":
            return self.kernels.decode_attention_ref(self.q, self.k, self.v, self.kv_indptr, self.kv_indices)
        if self._wrapper is None:
            raise RuntimeError("DecodeAttention.plan(num_sms) must be called before run()")
        return self._wrapper.run(self.q, self.k, self.v)


class Copy:
    """Device-to-device copy of `nbytes`; bytes_moved counts read plus write."""

    def __init__(self, nbytes: int, device: str):
        self.src = torch.randn(nbytes // 4, device=device)  # never time on zeros
        self.dst = torch.empty_like(self.src)
        self.bytes_moved = 2 * self.src.numel() * 4

    def run(self):
        self.dst.copy_(self.src)


def time_ms(fn, stream=None, reps: int = 10, warmup: int = 2) -> float:
    """Median time (ms) of `fn()` enqueued on `stream` (None: the current stream)."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps must be >= 1 and warmup >= 0, got {reps}, {warmup}")
    if not torch.cuda.is_available():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    stream = stream or torch.cuda.current_stream()
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            start.record(stream)
            fn()
            end.record(stream)
    stream.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)

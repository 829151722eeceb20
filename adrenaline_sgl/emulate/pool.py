"""How big the emulated GPU's KV pool is, in tokens, and the SGLang settings that GPU would get by default.

The pool is sized exactly as the simulator sizes a GPU (`sim/costs.py`): `mem_fraction x HBM -
weights`, divided by the emulated model's KV bytes per token (all layers, K and V, fp16/bf16), i.e. the
scheduler's `kv_capacity_bytes`. A100-80GB with Llama-2 13B: 0.88 x 80 GiB - 24.2 GiB of weights = 46.2 GiB,
/ 800 KiB per token = 60,497 tokens. The stand-in model allocates only a tiny footprint per token; SGLang
is given the count with `--max-total-tokens`.

NOTE: SGLang on a real GPU sizes its pool from the free memory it measures after loading the weights,
minus activation and CUDA-graph headroom (`mem_fraction_static`); the result differs from this arithmetic
by the CUDA context and graph buffers (typically 1 to 3 GiB, i.e. a few percent of the pool). We keep the
simulator's arithmetic so both tools emulate the same pool.
"""

from __future__ import annotations

from adrenaline_sgl.scheduler.bounds import kv_capacity_bytes
from adrenaline_sgl.scheduler.specs import get_gpu, get_model


def kv_pool_tokens(cfg, role: str = "decode") -> int:
    """KV tokens of one emulated instance of `role` (`cfg`: an EmulateConfig; its `max_total_tokens`, and
    for prefill its `prefill_max_total_tokens`, win when set)."""
    if role == "prefill" and cfg.prefill_max_total_tokens is not None:
        return int(cfg.prefill_max_total_tokens)
    if cfg.max_total_tokens is not None:
        return int(cfg.max_total_tokens)
    gpu, model = get_gpu(device(cfg, role)), get_model(cfg.model)
    return int(kv_capacity_bytes(gpu, model, cfg.mem_fraction) // model.kv_bytes_per_token)


def device(cfg, role: str = "decode") -> str:
    """The emulated device of an instance of `role`: `prefill_gpu` for prefill when set, else `gpu`."""
    return cfg.prefill_gpu if role == "prefill" and cfg.prefill_gpu else cfg.gpu


def chunked_prefill_size(cfg, role: str = "decode") -> int:
    """SGLang 0.5.23's default `--chunked-prefill-size` for the emulated GPU's memory (TP 1).

    From `srt/arg_groups/memory_hook.py::_handle_gpu_memory_settings`: < 20 GiB 2048, < 35 GiB 4096,
    < 60 GiB 4096, < 90 GiB 8192 (A100-80GB, H100), < 160 GiB 8192 (H200), else 16384. On a CPU SGLang
    falls back to 4096, so the emulated server must be told.
    """
    mib = get_gpu(device(cfg, role)).hbm_gib * 1024
    for limit_gib, size in ((20, 2048), (35, 4096), (60, 4096), (90, 8192), (160, 8192)):
        if mib < limit_gib * 1024:
            return size
    return 16384


def server_args(cfg, role: str = "decode") -> list[str]:
    """SGLang flags every emulated server of `role` gets: its pool in tokens, the GPU's chunked prefill size,
    the emulated model's context length."""
    return ["--max-total-tokens", str(kv_pool_tokens(cfg, role)),
            "--chunked-prefill-size", str(chunked_prefill_size(cfg, role)),
            "--context-length", str(get_model(cfg.model).max_context_tokens)]  # fmt: skip


RESERVED_FLAGS = ("--max-total-tokens", "--chunked-prefill-size", "--context-length", "--model-path")

"""Prefill and decode step times of the real model on the decode harness, split per operator (profile_cpu).

The harness (`tools/decode_harness.py`: transformers' `LlamaForCausalLM` with our attention function; local
attention is the executor's kernel over a pool) runs each point in pairs of calls, alternating:
- plain, for the whole time (nothing added to the forward);
- instrumented, for the parts: forward hooks time q/k/v projections (`qkv`), `o_proj`, the MLP (`ffn`), the
  final norm with the LM head (`sampling`), and a wrapper around our attention function times `attn`.
`misc` (norms, RoPE, residual adds, Python between the modules, argmax, KV into the pool) is what the plain
time leaves over: per layer, (whole - sampling) / layers - qkv - o_proj - ffn - attn. A CPU runs one op at a
time, so wall-clock brackets are the ops' times.

Decode points start from requests whose prompt KV is random (attention time does not depend on the values)
and whose context is `context` tokens; every step adds one, so the context a point reports is the mean over
its timed steps: the same offset for every batch (the table's attention grid stays complete).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.tools import decode_harness as harness_mod


@dataclass(frozen=True)
class StepParts:
    """One point: whole-call times (plain runs) and per-call op times (instrumented runs), ms."""

    whole_ms: list[float]
    ops_ms: dict[str, float]  # per layer, median over calls: qkv, o_proj, ffn, attn; per call: sampling
    attn_samples_ms: list[float]  # every layer's attention time of the instrumented calls
    context_tokens: int  # decode: per-sequence attention context of the instrumented steps (mean)
    whole_context_tokens: int  # decode: the same for the plain steps

    def misc_ms(self, num_layers: int) -> float:
        """Per layer: the plain time not covered by the timed ops (see the module docstring)."""
        whole = statistics.median(self.whole_ms)
        layer_ops = sum(self.ops_ms[op] for op in ("qkv", "o_proj", "ffn", "attn"))
        return (whole - self.ops_ms["sampling"]) / num_layers - layer_ops


class OpTimer:
    """Times the model's modules and our attention function while active (see the module docstring)."""

    def __init__(self, model):
        self.model = model
        self.calls: dict[str, list[float]] = defaultdict(list)  # op -> time of each call (one module, one layer)
        self._open: dict[int, float] = {}

    def _pre(self, module, args):
        self._open[id(module)] = time.perf_counter()

    def _post_for(self, op: str) -> Callable:
        def post(module, args, output):
            self.calls[op].append((time.perf_counter() - self._open.pop(id(module))) * 1e3)

        return post

    @contextmanager
    def active(self):
        from transformers import AttentionInterface

        timed = [(self.model.model.norm, "sampling"), (self.model.lm_head, "sampling")]
        for layer in self.model.model.layers:
            attn = layer.self_attn
            timed += [(attn.q_proj, "qkv"), (attn.k_proj, "qkv"), (attn.v_proj, "qkv"), (attn.o_proj, "o_proj"),
                      (layer.mlp, "ffn")]
        handles = []
        for module, op in timed:
            handles += [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post_for(op))]

        def timed_attention(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return harness_mod._attention(*args, **kwargs)
            finally:
                self.calls["attn"].append((time.perf_counter() - t0) * 1e3)

        AttentionInterface.register(harness_mod.ATTN_NAME, timed_attention)
        try:
            yield self
        finally:
            harness_mod.register_attention()  # back to the plain function
            for h in handles:
                h.remove()

    def per_call(self, num_layers: int, num_calls: int) -> dict[str, float]:
        """Median per-layer time of each layer op (qkv: its three projections summed) and sampling per call."""
        out = {}
        for op in ("qkv", "o_proj", "ffn", "attn"):
            times = self.calls[op]
            per_module = len(times) // (num_layers * num_calls)  # qkv: 3 modules per layer
            sums = [sum(times[i:i + per_module]) for i in range(0, len(times), per_module)]
            out[op] = statistics.median(sums)
        sampling = self.calls["sampling"]
        out["sampling"] = statistics.median(sum(sampling[i:i + 2]) for i in range(0, len(sampling), 2))
        return out


def prefill_parts(harness, prompt_tokens: int, warmup: int, iters: int, seed: int = 0) -> StepParts:
    """One prompt of `prompt_tokens` random ids through the harness's prefill (`generate`, one token)."""
    vocab = harness.model.config.vocab_size
    prompt = torch.randint(0, vocab, (prompt_tokens,), generator=torch.Generator().manual_seed(seed)).tolist()

    def once() -> float:
        t0 = time.perf_counter()
        harness.generate([prompt], [False], max_new_tokens=1)
        return (time.perf_counter() - t0) * 1e3

    return _alternate(harness, once, warmup, iters)


def _alternate(harness, once: Callable[[], float], warmup: int, iters: int) -> StepParts:
    """`warmup` untimed calls, then `iters` pairs of (plain, instrumented) calls: both see the same machine."""
    for _ in range(warmup):
        once()
    whole = []
    timer = OpTimer(harness.model)
    for _ in range(iters):
        whole.append(once())
        with timer.active():
            once()
    return StepParts(whole, timer.per_call(harness.num_layers, iters), list(timer.calls["attn"]), 0, 0)


def decode_parts(harness, batch: int, context: int, warmup: int, iters: int, seed: int = 0) -> StepParts:
    """Decode steps of `batch` local requests holding `context` tokens each (random prompt KV)."""
    model = harness.model
    cfg = model.config
    steps = warmup + 2 * iters
    pool = KVPool.standalone(harness.num_layers, batch * (context + steps) + 16, harness.num_kv_heads,
                             harness.head_dim, model.dtype, model.device)
    local = AttentionExecutor(pool, harness.local_attention, num_q_heads=cfg.num_attention_heads)
    gen = torch.Generator().manual_seed(seed)
    seqs = []
    for i in range(batch):
        rid = f"r{i}"
        shape = (harness.num_layers, context, harness.num_kv_heads, harness.head_dim)
        k, v = torch.randn(shape, generator=gen).to(model.dtype), torch.randn(shape, generator=gen).to(model.dtype)
        local.adopt_copy(rid, k, v)
        prompt = torch.randint(0, cfg.vocab_size, (context,), generator=gen).tolist()
        seqs.append(harness_mod._Seq(rid, prompt, offloaded=False, tokens=[prompt[-1]]))

    def once() -> float:
        t0 = time.perf_counter()
        harness.decode_step(seqs, local)
        return (time.perf_counter() - t0) * 1e3

    with torch.inference_mode():
        parts = _alternate(harness, once, warmup, iters)
    # plain call i attends over context + warmup + 2i - 1 tokens per request, instrumented call i over
    # context + warmup + 2i (the new slot included); their means over i = 1 .. iters:
    return replace(parts, whole_context_tokens=context + warmup + iters, context_tokens=context + warmup + iters + 1)

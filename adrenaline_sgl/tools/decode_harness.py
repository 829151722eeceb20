"""Decode harness: a real Llama (transformers' `LlamaForCausalLM`) decoding with some requests offloaded.

The model is transformers' own; only its attention function is ours, registered through transformers'
attention interface as `adrenaline_offload`. In prefill it is SDPA (causal, one prompt at a time) and it
captures each layer's k, v for adoption; in decode it is the offload step:

    per layer:  client.submit(layer, q[off], k[off], v[off])    one message, returns at once
                o[local] = local.step(layer, ...)               local attention meanwhile
                o[off]   = client.wait()                        remote (o, lse)

The "local" side is an `AttentionExecutor` over this process's own pool, so a run without offload and a
run with offload execute the same kernels on every row: greedy tokens must match exactly.
If the executor fails mid-step (`OffloadError`), the step is rolled back, the offloaded requests are marked
failed and the local ones go on decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from adrenaline_sgl.offload.client import OffloadClient
from adrenaline_sgl.offload.errors import OffloadError
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool

ATTN_NAME = "adrenaline_offload"


@dataclass
class _Prefill:
    k: list[torch.Tensor] = field(default_factory=list)  # per layer [T, Hkv, D]
    v: list[torch.Tensor] = field(default_factory=list)


@dataclass
class _Decode:
    local: AttentionExecutor
    local_rids: tuple[str, ...]
    local_rows: torch.Tensor  # [M] int64 rows of the batch attended here
    client: OffloadClient | None
    off_rows: torch.Tensor  # [N] int64 rows attended by the executor


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention signature: query [B, Hq, S, D], key/value [B, Hkv, S, D] -> ([B, S, Hq, D], None)."""
    ctx = kwargs.get("adrenaline_ctx")
    if isinstance(ctx, _Prefill):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if query.shape[0] != 1:
            raise ValueError("the harness prefills one prompt at a time")
        ctx.k.append(key[0].transpose(0, 1).contiguous())  # [T, Hkv, D]
        ctx.v.append(value[0].transpose(0, 1).contiguous())
        return sdpa_attention_forward(module, query, key, value, None, dropout=0.0, scaling=scaling, is_causal=True)
    if not isinstance(ctx, _Decode):
        raise RuntimeError(f"attention {ATTN_NAME!r} needs adrenaline_ctx=...; call it through DecodeHarness")
    layer = module.layer_idx
    q, k, v = query[:, :, 0], key[:, :, 0], value[:, :, 0]  # [B, Hq, D], [B, Hkv, D], [B, Hkv, D]
    out = torch.empty_like(q)  # [B, Hq, D]
    if ctx.client is not None:
        off = ctx.off_rows
        ctx.client.submit(layer, q[off], k[off], v[off])
    if ctx.local_rids:
        loc = ctx.local_rows
        out[loc], _ = ctx.local.step(layer, ctx.local_rids, q[loc], k[loc], v[loc])
    if ctx.client is not None:
        out[ctx.off_rows], _ = ctx.client.wait()
    return out.unsqueeze(1), None  # [B, 1, Hq, D]


def register_attention() -> None:
    """Make `attn_implementation="adrenaline_offload"` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, _attention)
    AttentionMaskInterface.register(ATTN_NAME, lambda *args, **kwargs: None)  # prefill: SDPA is_causal; decode: none


@dataclass
class _Seq:
    rid: str
    prompt: list[int]
    offloaded: bool
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    failed: str | None = None

    @property
    def position(self) -> int:
        """Position of the token fed next (the last generated one)."""
        return len(self.prompt) + len(self.tokens) - 1


@dataclass(frozen=True)
class GenerationResult:
    tokens: list[list[int]]  # per request, the generated ids (the first one from prefill)
    failed: dict[str, str]  # rid -> why, for offloaded requests lost to an executor failure
    steps: int
    failed_at: float | None = None  # time.perf_counter() when the executor failure was caught


class DecodeHarness:
    """Greedy generation for a batch of prompts, attention split between a local executor and a client."""

    def __init__(self, model, client: OffloadClient | None = None, local_attention: str = "auto",
                 eos_token_id: int | None = None):
        register_attention()
        model.config._attn_implementation = ATTN_NAME
        self.model = model.eval()
        self.client = client
        self.local_attention = local_attention
        self.eos_token_id = eos_token_id
        cfg = model.config
        self.num_layers = cfg.num_hidden_layers
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.failed_at: float | None = None

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], offloaded: Sequence[bool], max_new_tokens: int,
                 on_step: Callable[[int], None] | None = None, progress: bool = False) -> GenerationResult:
        """Prefill each prompt, then decode all of them together for up to `max_new_tokens` tokens each."""
        if len(prompts) != len(offloaded):
            raise ValueError(f"offloaded must have one flag per prompt ({len(prompts)}), got {len(offloaded)}")
        if any(offloaded) and self.client is None:
            raise ValueError("offloaded requests need a client")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        seqs = [_Seq(f"r{i}", list(p), bool(o)) for i, (p, o) in enumerate(zip(prompts, offloaded))]
        pool = KVPool.standalone(self.num_layers, sum(len(s.prompt) + max_new_tokens for s in seqs),
                                 self.num_kv_heads, self.head_dim, self.model.dtype, self.model.device)
        local = AttentionExecutor(pool, self.local_attention, num_q_heads=self.model.config.num_attention_heads)
        for seq in seqs:
            self._prefill(seq, local)
        steps = 0
        from tqdm import tqdm

        for step in tqdm(range(max_new_tokens - 1), desc="decode", disable=not progress):
            self._finish(seqs, local, max_new_tokens)
            batch = [s for s in seqs if not s.done]
            if not batch:
                break
            if on_step is not None:
                on_step(step)
            self.decode_step(batch, local)
            steps += 1
        self._finish(seqs, local, max_new_tokens)
        return GenerationResult([s.tokens for s in seqs], {s.rid: s.failed for s in seqs if s.failed}, steps,
                                self.failed_at)

    def decode_step(self, batch: list[_Seq], local: AttentionExecutor) -> None:
        """One token for every request in `batch`; an executor failure drops the offloaded ones and retries."""
        offloaded = [s for s in batch if s.offloaded] if self.client is not None else []
        local_seqs = [s for s in batch if not s.offloaded]
        local.begin_step([s.rid for s in local_seqs])
        try:
            if offloaded:
                self.client.begin_step([s.rid for s in offloaded])
            logits = self._forward(batch, local, offloaded)
        except OffloadError as exc:
            self.failed_at = time.perf_counter()
            local.abort_step()
            for seq in offloaded:
                seq.failed, seq.done = str(exc), True
            self.client = None  # NOTE: a failed executor is not retried within a generation
            if local_seqs:
                self.decode_step(local_seqs, local)
            return
        for seq, token in zip(batch, logits.argmax(-1).tolist()):
            seq.tokens.append(token)

    def _forward(self, batch: list[_Seq], local: AttentionExecutor, offloaded: list[_Seq]) -> torch.Tensor:
        device = self.model.device
        rows = {s.rid: i for i, s in enumerate(batch)}
        ctx = _Decode(
            local=local,
            local_rids=tuple(s.rid for s in batch if not s.offloaded),
            local_rows=torch.tensor([rows[s.rid] for s in batch if not s.offloaded], dtype=torch.int64, device=device),
            client=self.client if offloaded else None,
            off_rows=torch.tensor([rows[s.rid] for s in offloaded], dtype=torch.int64, device=device),
        )
        input_ids = torch.tensor([[s.tokens[-1]] for s in batch], device=device)  # [B, 1]
        position_ids = torch.tensor([[s.position] for s in batch], device=device)  # [B, 1]
        out = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False, adrenaline_ctx=ctx)
        return out.logits[:, -1]  # [B, vocab]

    def _prefill(self, seq: _Seq, local: AttentionExecutor) -> None:
        ctx = _Prefill()
        input_ids = torch.tensor([seq.prompt], device=self.model.device)  # [1, T]
        out = self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1, adrenaline_ctx=ctx)
        seq.tokens.append(int(out.logits[0, -1].argmax()))
        k, v = torch.stack(ctx.k), torch.stack(ctx.v)  # [L, T, Hkv, D]
        if seq.offloaded:
            self.client.adopt_copy(seq.rid, k, v)
        else:
            local.adopt_copy(seq.rid, k, v)

    def _finish(self, seqs: list[_Seq], local: AttentionExecutor, max_new_tokens: int) -> None:
        """Mark finished requests (EOS or length) done and release their KV on whichever side holds it."""
        for seq in seqs:
            if seq.done or not seq.tokens:
                continue
            if len(seq.tokens) >= max_new_tokens or (self.eos_token_id is not None and seq.tokens[-1] ==
                                                      self.eos_token_id):
                seq.done = True
                if seq.offloaded:
                    self.client.release(seq.rid)
                else:
                    local.release(seq.rid)

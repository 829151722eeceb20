"""The simulator's operator costs: the scheduler's cost model with the signatures the event loop wants.

NOTE: the simulator has no cost model of its own. Every time, FLOP and byte count in `SchedulerCosts` is
the predictor's `op_cost` (or its step helpers) from `adrenaline_sgl.scheduler.cost_model`, the same
predictor the real proxy uses; this module only adapts signatures and adds the FLOP/byte totals the
utilization metrics need. The KV capacity of an instance is the predictor's `kv_capacity_tokens`
(`gpu_mem_util x HBM - weights` per GPU over the KV per token per GPU; activation workspace not
subtracted). At `tp` > 1 every time, FLOP and byte count is one GPU's (its shard plus the group's
collectives), so the per-GPU metrics keep their meaning; `info` describes one GPU of an instance.
`FakeCosts` is the test double (round numbers that make timelines hand-computable), never used by
experiments.

Prefill instances may run on another device than decode (`SimConfig.prefill_gpu`): their prefill batches and
the executor's attention then come from that device's predictor, everything of the decode step from
`gpu`'s. KV capacities are the predictor's unless the config gives them in tokens (a server's
`--max-total-tokens`).

Registry: `get_costs(name, sim_cfg)` with "scheduler" (default) and "fake".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from adrenaline_sgl.scheduler.cost_model import OpCost, get_predictor

from .config import SimConfig
from .records import InstanceInfo


@dataclass(frozen=True)
class Work:
    """Time and work of one operator group on one GPU."""

    ms: float
    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.ms + other.ms, self.flops + other.flops, self.bytes + other.bytes)


NO_WORK = Work(0.0, 0.0, 0.0)


class SimCosts(Protocol):
    """What the event loop asks. Times in ms for the whole model (all layers) unless named per layer."""

    info: InstanceInfo  # a decode instance (info.kv_capacity_tokens: its KV pool)
    num_layers: int
    prefill_kv_capacity_tokens: int  # KV pool of a prefill instance (the executor's part included)

    def prefill(self, prompt_lens: Sequence[int], sm_share: float) -> Work:
        """One prefill batch of these prompts on a GPU share."""

    def decode_nonattn(self, batch: int) -> Work:
        """QKV, O projection, FFN, norms, sampling of a decode step for `batch` rows."""

    def decode_attn(self, batch: int, context_tokens: int, sm_share: float) -> Work:
        """Decode attention of `batch` rows over `context_tokens` KV tokens in total."""

    def executor_attn(self, batch: int, context_tokens: int, sm_share: float) -> Work:
        """The same on a prefill instance, by its attention executor."""

    def kv_transfer_ms(self, num_tokens: int) -> float:
        """Prefill -> decode KV transfer of one request's prompt."""

    def offload_roundtrip_ms(self, rows: int) -> float:
        """One layer's offload round trip (q/k/v out, o/lse back) for `rows` offloaded rows."""

    def kv_restore_ms(self, num_tokens: int) -> float:
        """Host -> GPU copy of a retracted request's KV (watermark admission)."""


@dataclass
class FakeCosts:
    """Test double: linear costs with round numbers. Not calibrated; experiments never use it."""

    num_layers: int = 10
    prefill_ms_per_token: float = 0.1
    decode_base_ms: float = 10.0
    decode_ms_per_row: float = 0.1
    attn_ms_per_kv_token: float = 0.001
    transfer_ms_per_token: float = 0.01
    roundtrip_ms: float = 0.05  # per layer
    kv_capacity_tokens: int = 20_000
    kv_bytes_per_token: float = 1000.0
    weight_bytes: float = 1e9

    def __post_init__(self):
        hbm = self.weight_bytes + self.kv_capacity_tokens * self.kv_bytes_per_token
        self.prefill_kv_capacity_tokens = self.kv_capacity_tokens
        self.info = InstanceInfo(
            hbm_bytes=hbm,
            weight_bytes=self.weight_bytes,
            kv_bytes_per_token=self.kv_bytes_per_token,
            kv_capacity_tokens=self.kv_capacity_tokens,
            peak_flops=1e12,
            peak_hbm_bytes_per_s=1e11,
        )

    def prefill(self, prompt_lens: Sequence[int], sm_share: float) -> Work:
        tokens = sum(prompt_lens)
        return Work(self.prefill_ms_per_token * tokens / sm_share, 2e6 * tokens, 1e9 + 1e3 * tokens)

    def decode_nonattn(self, batch: int) -> Work:
        if batch == 0:
            return NO_WORK
        return Work(self.decode_base_ms + self.decode_ms_per_row * batch, 2e6 * batch, 1e9)

    def decode_attn(self, batch: int, context_tokens: int, sm_share: float) -> Work:
        if batch == 0:
            return NO_WORK
        return Work(self.attn_ms_per_kv_token * context_tokens / sm_share, 4e3 * context_tokens,
                    self.kv_bytes_per_token * context_tokens)

    def executor_attn(self, batch: int, context_tokens: int, sm_share: float) -> Work:
        return self.decode_attn(batch, context_tokens, sm_share)

    def kv_transfer_ms(self, num_tokens: int) -> float:
        return self.transfer_ms_per_token * num_tokens

    def offload_roundtrip_ms(self, rows: int) -> float:
        return self.roundtrip_ms if rows else 0.0

    def kv_restore_ms(self, num_tokens: int) -> float:
        return 2 * self.transfer_ms_per_token * num_tokens


def _work(costs: Sequence[OpCost]) -> Work:
    return Work(sum(c.ms for c in costs), sum(c.flops for c in costs), sum(c.bytes for c in costs))


class SchedulerCosts:
    """The scheduler's predictor for one (GPU, model), with the signatures the event loop wants."""

    def __init__(self, cfg: SimConfig):
        self.pred = get_predictor(cfg.predictor, cfg.gpu, cfg.model, tp=cfg.tp)
        same = not cfg.prefill_gpu or cfg.prefill_gpu == cfg.gpu
        self.prefill_pred = self.pred if same else get_predictor(cfg.predictor, cfg.prefill_gpu, cfg.model, tp=cfg.tp)
        self.link = cfg.link
        gpu, model, shard = self.pred.gpu, self.pred.model, self.pred.shard
        self.num_layers = model.num_layers
        # one full context must fit; the error names the smallest TP that would
        shard.check_fits(gpu, cfg.gpu_mem_util, min_kv_tokens=model.max_context_tokens)
        capacity = cfg.decode_kv_capacity_tokens or self.pred.kv_capacity_tokens(cfg.gpu_mem_util)
        if not same:
            self.prefill_pred.shard.check_fits(self.prefill_pred.gpu, cfg.gpu_mem_util,
                                               min_kv_tokens=model.max_context_tokens)
        self.prefill_kv_capacity_tokens = (cfg.prefill_kv_capacity_tokens
                                           or self.prefill_pred.kv_capacity_tokens(cfg.gpu_mem_util))
        self.info = InstanceInfo(
            hbm_bytes=float(gpu.hbm_bytes),
            weight_bytes=float(shard.weight_bytes),
            kv_bytes_per_token=float(shard.kv_bytes_per_token),
            kv_capacity_tokens=capacity,
            peak_flops=gpu.peak_flops,
            peak_hbm_bytes_per_s=gpu.hbm_bytes_per_s,
        )
        self.kv_transfer_ms(1)  # fail now, with the scheduler's message, on an unknown link name
        self._nonattn = lru_cache(maxsize=8192)(self._decode_nonattn_uncached)
        self._lines: dict = {}  # (predictor id, batch, share) -> attention line
        self._roundtrip_ms = lru_cache(maxsize=4096)(lambda rows: self.pred.offload_layer_roundtrip_ms(rows, self.link))
        self.max_context = model.max_context_tokens

    def prefill(self, prompt_lens: Sequence[int], sm_share: float) -> Work:
        return _work(self.prefill_pred.prefill_step_costs(prompt_lens, sm_share))

    def decode_nonattn(self, batch: int) -> Work:
        return self._nonattn(int(batch))

    def _decode_nonattn_uncached(self, batch: int) -> Work:
        if batch <= 0:
            return NO_WORK
        return _work(self.pred.decode_nonattn_costs(batch))

    def decode_attn(self, batch: int, context_tokens: int, sm_share: float) -> Work:
        return self._attn(self.pred, batch, context_tokens, sm_share)

    def executor_attn(self, batch: int, context_tokens: int, sm_share: float) -> Work:
        return self._attn(self.prefill_pred, batch, context_tokens, sm_share)

    def _attn(self, pred, batch: int, context_tokens: int, sm_share: float) -> Work:
        if batch <= 0:
            return NO_WORK
        line = self._attn_line(int(batch), float(sm_share), pred)
        if line is None:
            return self._decode_attn_exact(batch, context_tokens, sm_share, pred)
        (ms0, f0, b0), (ms_k, f_k, b_k) = line
        return Work(ms0 + ms_k * context_tokens, f0 + f_k * context_tokens, b0 + b_k * context_tokens)

    def _decode_attn_exact(self, batch: int, context_tokens: int, sm_share: float, pred=None) -> Work:
        c = (pred or self.pred).op_cost("attn", "decode", batch, context_tokens, batch, sm_share)
        return _work([c.times(self.num_layers)])

    def _attn_line(self, batch: int, sm_share: float, pred=None):
        """(intercept, slope) of decode attention in the context length at this (batch, share), or None.

        NOTE: a speed-up only, never a second model. The event loop asks for decode attention at every step
        with a new context length; the predictor's answer is affine in it over the whole range a batch can
        have (memory-bound streaming of KV), which this checks at five points before using the line. Where
        the check fails (a kink, or a table predictor), every call goes to the predictor.
        """
        pred = pred or self.pred
        key = (id(pred), batch, sm_share)
        if key not in self._lines:
            lo, hi = batch, batch * self.max_context
            pts = [lo + (hi - lo) * i // 4 for i in range(5)]
            works = [self._decode_attn_exact(batch, c, sm_share, pred) for c in pts]
            span = pts[-1] - pts[0]
            k = tuple((getattr(works[-1], f) - getattr(works[0], f)) / span for f in ("ms", "flops", "bytes"))
            b0 = tuple(getattr(works[0], f) - k[i] * pts[0] for i, f in enumerate(("ms", "flops", "bytes")))
            affine = span > 0 and all(
                abs(b0[i] + k[i] * c - getattr(w, f)) <= 1e-9 * max(abs(getattr(w, f)), 1e-30)
                for c, w in zip(pts, works)
                for i, f in enumerate(("ms", "flops", "bytes"))
            )
            self._lines[key] = (b0, k) if affine else None
        return self._lines[key]

    def kv_transfer_ms(self, num_tokens: int) -> float:
        return self.pred.kv_transfer_ms(num_tokens, self.link)

    def offload_roundtrip_ms(self, rows: int) -> float:
        return self._roundtrip_ms(int(rows))

    def kv_restore_ms(self, num_tokens: int) -> float:
        """Retraction backup restored from host memory: the scheduler's `pcie4` link (SGLang's cpu_tensor)."""
        return self.pred.kv_transfer_ms(num_tokens, "pcie4")


COSTS: dict[str, Callable[[SimConfig], SimCosts]] = {"scheduler": SchedulerCosts, "fake": lambda cfg: FakeCosts()}


def get_costs(name: str, cfg: SimConfig) -> SimCosts:
    """The cost adapter `name` for a simulator config."""
    if name not in COSTS:
        raise ValueError(f"costs={name!r} is unknown; valid: {', '.join(COSTS)}")
    return COSTS[name](cfg)

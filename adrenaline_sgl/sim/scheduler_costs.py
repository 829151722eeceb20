"""`SimCosts` on top of the scheduler's predictor (`adrenaline_sgl.scheduler.cost_model.get_predictor`).

Only composition happens here: every time, FLOP and byte count is the predictor's `op_cost` (or its step
helpers), so the simulator and the real proxy share one cost model. The KV capacity of a GPU is
the scheduler's `kv_capacity_bytes` (`gpu_mem_util x HBM - weights`; activation workspace not subtracted).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from adrenaline_sgl.scheduler.bounds import kv_capacity_bytes
from adrenaline_sgl.scheduler.cost_model import OpCost, get_predictor

from .config import ClusterConfig
from .costs import NO_WORK, Work
from .records import InstanceInfo

_NONATTN_OPS = ("qkv", "o_proj", "ffn", "misc")


def _work(costs: Sequence[OpCost]) -> Work:
    return Work(sum(c.ms for c in costs), sum(c.flops for c in costs), sum(c.bytes for c in costs))


class SchedulerCosts:
    """The scheduler's predictor for one (GPU, model), with the signatures the event loop wants."""

    def __init__(self, cfg: ClusterConfig):
        self.pred = get_predictor(cfg.predictor, cfg.gpu, cfg.model)
        self.link = cfg.link
        gpu, model = self.pred.gpu, self.pred.model
        self.num_layers = model.num_layers
        capacity = int(kv_capacity_bytes(gpu, model, cfg.gpu_mem_util) // model.kv_bytes_per_token)
        if capacity < model.max_context_tokens:
            raise ValueError(
                f"model={model.name!r} leaves {max(capacity, 0)} KV tokens on gpu={gpu.name!r} at "
                f"gpu_mem_util={cfg.gpu_mem_util}; need >= {model.max_context_tokens} (one full context)"
            )
        self.info = InstanceInfo(
            hbm_bytes=float(gpu.hbm_bytes),
            weight_bytes=float(model.weight_bytes),
            kv_bytes_per_token=float(model.kv_bytes_per_token),
            kv_capacity_tokens=capacity,
            peak_flops=gpu.peak_flops,
            peak_hbm_bytes_per_s=gpu.hbm_bytes_per_s,
        )
        self.kv_transfer_ms(1)  # fail now, with the scheduler's message, on an unknown link name
        self._nonattn = lru_cache(maxsize=8192)(self._decode_nonattn_uncached)

    def prefill(self, prompt_lens: Sequence[int], sm_share: float) -> Work:
        return _work(self.pred.prefill_step_costs(prompt_lens, sm_share))

    def decode_nonattn(self, batch: int) -> Work:
        return self._nonattn(int(batch))

    def _decode_nonattn_uncached(self, batch: int) -> Work:
        if batch <= 0:
            return NO_WORK
        costs = [self.pred.op_cost(op, "decode", batch).times(self.num_layers) for op in _NONATTN_OPS]
        costs.append(self.pred.op_cost("sampling", "decode", batch))
        return _work(costs)

    def decode_attn(self, batch: int, context_tokens: int, sm_share: float) -> Work:
        if batch <= 0:
            return NO_WORK
        c = self.pred.op_cost("attn", "decode", batch, context_tokens, batch, sm_share)
        return _work([c.times(self.num_layers)])

    def kv_transfer_ms(self, num_tokens: int) -> float:
        return self.pred.kv_transfer_ms(num_tokens, self.link)

    def offload_roundtrip_ms(self, rows: int) -> float:
        return self.pred.offload_layer_roundtrip_ms(rows, self.link)

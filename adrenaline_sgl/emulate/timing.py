"""How long the emulated GPU takes for one SGLang forward: the scheduler's cost model, step by step.

Every time is the scheduler's predictor (`adrenaline_sgl.scheduler.cost_model`), the one the simulator and
the proxy's `auto` policy use, composed the way the simulator composes it (`sim/engine.py`), so that a
difference between the two tools is a difference in SGLang's control plane, not in the GPU model. The
prefill instance's device may differ from decode's (`prefill_gpu`: its prefill and its executor's attention
come from that device's predictor, as the simulator's `prefill_gpu`):

- prefill (an extend batch of SGLang's): `prefill_step_ms(new tokens per request)` on the prefill
  instance's share of its device (`prefill_sm_share`: 1 - executor share when it hosts an Adrenaline
  executor on a partitioned GPU, the whole device otherwise). A chunk with a cached prefix is charged for
  its new tokens only (the cost model has no prefix attention term);
- decode with M local and N_p offloaded rows per executor p (paper technique 1, per-layer overlap):

      nonattn(M + N) + max(local_attn(M), max_p [remote_attn_p(N_p) + L x roundtrip(N_p)])

  `executor_colocation` says how remote attention shares the prefill device (the simulator's
  `_executor_attn`): partition: on the executor's SM share, with at most the HBM bandwidth a prefill batch
  running on that GPU leaves free (technique 2's interference); timeshare (one CPU core hosts prefill and
  the executor): on the whole device, twice as long while a prefill batch runs (its fair half of the core);
- KV transfer of T tokens: `kv_transfer_ms(T, link)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from adrenaline_sgl.scheduler.cost_model import get_predictor


@dataclass(frozen=True)
class RemoteRows:
    """One executor's share of a decode step: its rows and the KV tokens they attend (summed)."""

    rows: int
    context_tokens: int
    busy_bytes_per_s: float = 0.0  # HBM traffic of a prefill batch running on that GPU now (0: none runs)


@dataclass(frozen=True)
class DecodeTime:
    """One decode step's modelled time and its parts (ms, emulated time)."""

    ms: float
    nonattn_ms: float
    local_attn_ms: float
    remote_ms: float  # slowest executor: remote attention + its per-layer round trips
    roundtrip_ms: float  # that executor's round trips (all layers)


@dataclass(frozen=True)
class PrefillTime:
    ms: float
    bytes: float  # HBM traffic (the executor's contention reads bytes / ms)

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / (self.ms / 1e3) if self.ms > 0 else 0.0


class StepModel:
    """Modelled step times of one emulated PD pair (devices, model, link, executor share and colocation)."""

    def __init__(self, cfg):
        from adrenaline_sgl.emulate.config import prefill_profile_path

        self.pred = _predictor(cfg.predictor, cfg.gpu, cfg.model, cfg.profile)
        same = cfg.prefill_gpu is None or cfg.prefill_gpu == cfg.gpu
        self.prefill_pred = self.pred if same and not cfg.prefill_profile else _predictor(
            cfg.predictor, cfg.prefill_gpu or cfg.gpu, cfg.model, prefill_profile_path(cfg))
        self.link = cfg.link
        self.executor_sm_share = cfg.executor_sm_share
        self.timeshare = cfg.executor_colocation == "timeshare"
        self.num_layers = self.pred.model.num_layers
        # NOTE: decode's device's peak, as the simulator's contention rule reads it (`info.peak_hbm_bytes_per_s`);
        # the two devices differ only in the CPU experiment, which time-shares (no bandwidth rule)
        self.peak_hbm_bytes_per_s = self.pred.gpu.hbm_bytes_per_s
        self._nonattn_ms = lru_cache(maxsize=4096)(self.pred.decode_nonattn_ms)
        self._roundtrip_ms = lru_cache(maxsize=4096)(lambda rows: self.pred.offload_layer_roundtrip_ms(rows, self.link))

    def prefill_sm_share(self, hosts_executor: bool) -> float:
        """The prefill engine's share of its device: what a partitioned executor leaves, else all of it."""
        return 1.0 - self.executor_sm_share if hosts_executor and not self.timeshare else 1.0

    def prefill(self, new_tokens: Sequence[int], sm_share: float = 1.0) -> PrefillTime:
        """One extend batch: `new_tokens` per request (prompt tokens not in a cached prefix), on the prefill
        device at `sm_share` (`prefill_sm_share`)."""
        costs = self.prefill_pred.prefill_step_costs([int(n) for n in new_tokens if n > 0], sm_share)
        return PrefillTime(sum(c.ms for c in costs), sum(c.bytes for c in costs))

    def decode(self, local_rows: int, local_context_tokens: int, remote: Sequence[RemoteRows] = ()) -> DecodeTime:
        """One decode step (see the module docstring)."""
        batch = local_rows + sum(r.rows for r in remote)
        if batch == 0:
            return DecodeTime(0.0, 0.0, 0.0, 0.0, 0.0)
        nonattn = self._nonattn_ms(batch)
        local = self.pred.decode_attn_ms(local_rows, local_context_tokens) if local_rows else 0.0
        remote_ms = roundtrip_ms = 0.0
        for r in remote:
            if not r.rows:
                continue
            rt = self.num_layers * self._roundtrip_ms(r.rows)
            attn = self._executor_attn_ms(r)
            if attn + rt > remote_ms:
                remote_ms, roundtrip_ms = attn + rt, rt
        return DecodeTime(nonattn + max(local, remote_ms), nonattn, local, remote_ms, roundtrip_ms)

    def _executor_attn_ms(self, r: RemoteRows) -> float:
        """Remote attention on the prefill device (the simulator's `_executor_attn`): timeshare: the whole
        device, twice as long while a prefill batch runs; partition: the executor's SM share, stretched when a
        running prefill leaves too little HBM bandwidth."""
        if self.timeshare:
            ms = self.prefill_pred.op_cost("attn", "decode", r.rows, r.context_tokens, r.rows, 1.0).ms * self.num_layers
            return 2.0 * ms if r.busy_bytes_per_s > 0 else ms
        cost = self.prefill_pred.op_cost("attn", "decode", r.rows, r.context_tokens, r.rows, self.executor_sm_share)
        ms, traffic = cost.ms * self.num_layers, cost.bytes * self.num_layers
        if r.busy_bytes_per_s <= 0 or ms <= 0:
            return ms
        spare = max(self.peak_hbm_bytes_per_s - r.busy_bytes_per_s, 1e-3 * r.busy_bytes_per_s)
        return max(ms, traffic / spare * 1e3)

    def kv_transfer_ms(self, num_tokens: int) -> float:
        """Prefill -> decode KV of `num_tokens` tokens over the emulated link."""
        return self.pred.kv_transfer_ms(int(num_tokens), self.link)


def _predictor(name: str, gpu: str, model: str, profile: str | None):
    return get_predictor(name, gpu, model, **({"path": profile} if name == "table" and profile else {}))

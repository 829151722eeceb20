"""Cost model API: per-operator costs and the whole-step times the simulator and the bounds use.

    p = get_predictor("roofline", "a100-80g", "llama2-7b")      # or "table", path=... / table=...
    p.op_cost("qkv", "decode", num_tokens=32)                   # OpCost(ms, flops, bytes, fractions)
    p.prefill_step_ms([512, 1024])                              # one prefill batch, all layers, ms
    p.decode_nonattn_ms(64) + p.decode_attn_ms(64, 64 * 700)    # one decode step, ms
    p.kv_transfer_ms(1024, "nvlink"); p.offload_layer_roundtrip_ms(16, "nvlink")
    get_predictor("roofline", "a100-80g", "llama2-70b", tp=4)  # one GPU of a 4-way tensor-parallel group

Every predictor implements one method, `op_cost`; the step helpers here compose it, so both predictors
agree on what a step is. Costs are for one GPU of a `tp`-way tensor-parallel instance (default 1),
fp16/bf16: `op_cost` is the GPU's shard of the operator (`ops.py`); the step helpers add the group's
collectives (`comm_cost`: 2 all-reduces per layer, 1 after the embedding, the logits all-gather; ring
collectives over the NVLink curve of `collectives.get_comm_model`, measured for A100 where the shared data
is present), which run between the operators, not overlapped (SGLang's default). `sm_share` in (0, 1] is
the fraction of the GPU's SMs the work runs on (the executor's partition on a prefill GPU, see
docs/simulator.md). `kv_capacity_tokens(mem_fraction)` is the KV tokens the instance holds (weights and KV
heads per GPU).

Fractions in `OpCost` (what figures 1 and 2 plot):
- `tensor_frac`: achieved FLOP/s over the data-sheet peak (MFU of this op).
- `hbm_frac`: modelled HBM traffic per second over the data-sheet bandwidth.
- `compute_frac`: the paper's "compute utilization" (an SM-throughput counter): tensor work plus the SM
  cycles that issue memory traffic, `min(1, tensor_frac + issue_per_hbm[op] * hbm_frac)`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from adrenaline_sgl.scheduler.collectives import CommModel, get_comm_model
from adrenaline_sgl.scheduler.ops import LAYER_OPS, PHASES, check_op, comm_messages
from adrenaline_sgl.scheduler.specs import GPUSpec, ModelSpec, get_gpu, get_model


@dataclass(frozen=True)
class OpCost:
    """Cost of one operator call (or an aggregate of calls: then `op`/`phase` name the group)."""

    op: str
    phase: str
    ms: float
    flops: float
    bytes: float  # modelled HBM traffic, B
    tensor_frac: float = 0.0
    hbm_frac: float = 0.0
    compute_frac: float = 0.0

    def times(self, k: float) -> OpCost:
        """`k` identical calls back to back (e.g. all layers): time and work scale, fractions do not."""
        return OpCost(
            self.op,
            self.phase,
            self.ms * k,
            self.flops * k,
            self.bytes * k,
            self.tensor_frac,
            self.hbm_frac,
            self.compute_frac,
        )

    @staticmethod
    def combine(costs: Iterable[OpCost], op: str = "step", phase: str = "") -> OpCost:
        """Sequential calls: times and work add; fractions are time-weighted means."""
        costs = list(costs)
        ms = sum(c.ms for c in costs)
        if ms <= 0.0:
            return OpCost(op, phase, 0.0, 0.0, 0.0)

        def avg(field: str) -> float:
            return sum(getattr(c, field) * c.ms for c in costs) / ms

        return OpCost(
            op,
            phase or (costs[0].phase if costs else ""),
            ms,
            sum(c.flops for c in costs),
            sum(c.bytes for c in costs),
            avg("tensor_frac"),
            avg("hbm_frac"),
            avg("compute_frac"),
        )


@dataclass(frozen=True)
class LinkSpec:
    """A point-to-point link between two GPUs: time(bytes) = latency + bytes / bandwidth."""

    name: str
    gbs: float  # effective bandwidth per direction, 1e9 B/s
    latency_us: float

    def __post_init__(self) -> None:
        if not self.gbs > 0:
            raise ValueError(f"LinkSpec.gbs must be > 0, got {self.gbs!r}")
        if self.latency_us < 0:
            raise ValueError(f"LinkSpec.latency_us must be >= 0, got {self.latency_us!r}")

    def transfer_ms(self, num_bytes: float) -> float:
        if num_bytes <= 0:
            return 0.0
        return self.latency_us * 1e-3 + num_bytes / (self.gbs * 1e9) * 1e3


# NVLink latency: fit of time = latency + bytes/bw to Vidur's A100 NVLink send/recv medians
# (../shared/data/vidur/network, 994 sizes 2 KiB..64 MiB): 7.6 us and 359 GB/s. We keep the data-sheet
# bandwidth (the fit exceeds it, so the data sheet is the conservative choice). Other links: data-sheet
# bandwidth at 80% efficiency and typical one-way latencies; not measured here.
LINK_LATENCY_US = {"nvlink": 7.6, "pcie4": 10.0, "pcie5": 10.0, "ib-200g": 5.0, "ib-400g": 5.0}
_LINK_GBS = {"pcie4": 32.0 * 0.8, "pcie5": 64.0 * 0.8, "ib-200g": 25.0 * 0.8, "ib-400g": 50.0 * 0.8}


def get_link(name: str | LinkSpec, gpu: GPUSpec) -> LinkSpec:
    """Link by name: `nvlink` (the GPU's own), `pcie4`, `pcie5`, `ib-200g`, `ib-400g`; a spec passes through."""
    if isinstance(name, LinkSpec):
        return name
    if name == "nvlink":  # the device's own link; a measured device (specs.py) carries its measured latency
        latency = LINK_LATENCY_US["nvlink"] if gpu.link_latency_us is None else gpu.link_latency_us
        return LinkSpec("nvlink", gpu.nvlink_gbs, latency)
    if name not in _LINK_GBS:
        raise ValueError(f"link must be one of {sorted(LINK_LATENCY_US)}, got {name!r}")
    return LinkSpec(name, _LINK_GBS[name], LINK_LATENCY_US[name])


def check_sm_share(sm_share: float, field: str = "sm_share") -> None:
    if not 0.0 < sm_share <= 1.0:
        raise ValueError(f"{field} must be in (0, 1], got {sm_share!r}")


class Predictor(ABC):
    """Base of all predictors: `op_cost` per operator, whole-step helpers on top (all layers, ms)."""

    name = "base"

    def __init__(self, gpu: str | GPUSpec, model: str | ModelSpec, tp: int = 1, comm: CommModel | None = None) -> None:
        self.gpu = get_gpu(gpu)
        self.model = get_model(model)
        self.shard = self.model.shard(tp)  # validates tp against the model's heads and FFN width
        self.tp = tp
        self._comm = comm
        self._nonattn_cache = lru_cache(maxsize=8192)(self._decode_nonattn_ms_uncached)

    @property
    def comm(self) -> CommModel:
        """The group's collective model (`collectives.get_comm_model(gpu)` unless one was given)."""
        if self._comm is None:
            self._comm = get_comm_model(self.gpu)
        return self._comm

    def comm_cost(self, phase: str, num_tokens: int, logit_rows: int) -> OpCost:
        """The TP group's collectives of one whole step (all layers) over `num_tokens` rows (op `comm`)."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {list(PHASES)}, got {phase!r}")
        msg = comm_messages(self.shard, num_tokens, logit_rows)
        if msg.allreduce_count == 0:
            return OpCost("comm", phase, 0.0, 0.0, 0.0)
        ms = msg.allreduce_count * self.comm.allreduce_ms(msg.allreduce_bytes, self.tp)
        ms += self.comm.allgather_ms(msg.allgather_bytes, self.tp)
        return OpCost("comm", phase, ms, 0.0, 0.0)

    def kv_capacity_tokens(self, mem_fraction: float) -> int:
        """KV tokens the instance (all `tp` GPUs) holds when `mem_fraction` of each GPU's HBM is for weights
        and KV; activation workspace not subtracted."""
        return self.shard.kv_capacity_tokens(self.gpu, mem_fraction)

    @abstractmethod
    def op_cost(
        self,
        op: str,
        phase: str,
        num_tokens: int,
        context_tokens: int = 0,
        num_seqs: int = 1,
        sm_share: float = 1.0,
    ) -> OpCost:
        """Cost of one call of `op` (one layer; `sampling` once per step). Arguments: see `ops.py`."""

    # ---- prefill -------------------------------------------------------------------------------------
    def prefill_step_costs(self, prompt_lens: Sequence[int], sm_share: float = 1.0) -> list[OpCost]:
        """Per-op costs of one prefill batch over all layers (attention summed per prompt)."""
        lens = [int(n) for n in prompt_lens if n > 0]
        if any(n < 0 for n in prompt_lens):
            raise ValueError(f"prompt_lens must be >= 0, got {list(prompt_lens)}")
        if not lens:
            return []
        total, layers = sum(lens), self.model.num_layers
        costs = [
            self.op_cost(op, "prefill", total, sm_share=sm_share).times(layers)
            for op in ("qkv", "o_proj", "ffn", "misc")
        ]
        attn = [self.op_cost("attn", "prefill", n, sm_share=sm_share) for n in lens]
        costs.append(OpCost.combine(attn, op="attn", phase="prefill").times(layers))
        costs.append(self.op_cost("sampling", "prefill", len(lens), sm_share=sm_share))
        if self.tp > 1:
            costs.append(self.comm_cost("prefill", total, len(lens)))
        return costs

    def prefill_step_ms(self, prompt_lens: Sequence[int], sm_share: float = 1.0) -> float:
        """One prefill forward of `prompt_lens` (new tokens per prompt, no cached prefix), ms."""
        return sum(c.ms for c in self.prefill_step_costs(prompt_lens, sm_share))

    # ---- decode --------------------------------------------------------------------------------------
    def decode_step_costs(self, batch: int, total_context_tokens: int, sm_share: float = 1.0) -> list[OpCost]:
        """Per-op costs of one decode step of `batch` sequences holding `total_context_tokens` KV tokens."""
        if batch <= 0:
            return []
        costs = self.decode_nonattn_costs(batch, sm_share)
        layers = self.model.num_layers
        costs.insert(4, self.op_cost("attn", "decode", batch, total_context_tokens, batch, sm_share).times(layers))
        return costs

    def decode_nonattn_costs(self, batch: int, sm_share: float = 1.0) -> list[OpCost]:
        """Per-op costs of a decode step but attention: QKV, O, FFN, norms (all layers), sampling, and the
        TP group's collectives when tp > 1."""
        if batch < 0:
            raise ValueError(f"batch must be >= 0, got {batch}")
        if batch == 0:
            return []
        layers = self.model.num_layers
        costs = [self.op_cost(op, "decode", batch, sm_share=sm_share).times(layers) for op in LAYER_OPS if op != "attn"]
        costs.append(self.op_cost("sampling", "decode", batch, sm_share=sm_share))
        if self.tp > 1:
            costs.append(self.comm_cost("decode", batch, batch))
        return costs

    def decode_nonattn_ms(self, batch: int) -> float:
        """Everything of a decode step but attention (QKV, O, FFN, norms, sampling, TP collectives), ms."""
        if batch < 0:
            raise ValueError(f"batch must be >= 0, got {batch}")
        return self._nonattn_cache(int(batch))

    def _decode_nonattn_ms_uncached(self, batch: int) -> float:
        if batch == 0:
            return 0.0
        per_layer = sum(self.op_cost(op, "decode", batch).ms for op in LAYER_OPS if op != "attn")
        ms = per_layer * self.model.num_layers + self.op_cost("sampling", "decode", batch).ms
        return ms + self.comm_cost("decode", batch, batch).ms if self.tp > 1 else ms

    def decode_attn_ms(self, batch: int, total_context_tokens: int, sm_share: float = 1.0) -> float:
        """Decode attention of `batch` sequences over `total_context_tokens` KV tokens, all layers, ms."""
        if batch <= 0:
            return 0.0
        return self.op_cost("attn", "decode", batch, total_context_tokens, batch, sm_share).ms * self.model.num_layers

    def decode_step_ms(self, batch: int, total_context_tokens: int) -> float:
        """One decode step without offload, ms."""
        return self.decode_nonattn_ms(batch) + self.decode_attn_ms(batch, total_context_tokens)

    # ---- transfers -----------------------------------------------------------------------------------
    def kv_transfer_ms(self, num_tokens: int, link: str | LinkSpec = "nvlink") -> float:
        """Prefill -> decode KV transfer of `num_tokens` tokens (all layers, one message), ms. At TP > 1 each
        GPU sends its own KV heads to its peer at the same time (SGLang's per-rank transfer): one GPU's share."""
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        return get_link(link, self.gpu).transfer_ms(num_tokens * self.shard.kv_bytes_per_token)

    def offload_layer_bytes(self, rows: int) -> tuple[int, int]:
        """(to executor, back) bytes of one layer's offload round trip for `rows` offloaded rows, per GPU
        (at TP > 1 each decode GPU exchanges its own heads with its peer, all at once).

        Out: q, k_new, v_new (model dtype). Back: o (model dtype) and lse (fp32 per q head).
        """
        s, b = self.shard, self.model.bytes_per_param
        out = rows * s.qkv_out_dim * b
        back = rows * (s.q_dim * b + s.q_heads * 4)
        return out, back

    def offload_layer_roundtrip_ms(self, rows: int, link: str | LinkSpec = "nvlink") -> float:
        """Transfers of one layer's offload round trip (two messages), ms. Remote attention not included:
        add `decode_attn_ms(...) / num_layers` at the executor's `sm_share` for the full remote path."""
        if rows < 0:
            raise ValueError(f"rows must be >= 0, got {rows}")
        if rows == 0:
            return 0.0
        out, back = self.offload_layer_bytes(rows)
        spec = get_link(link, self.gpu)
        return spec.transfer_ms(out) + spec.transfer_ms(back)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(gpu={self.gpu.name!r}, model={self.model.name!r}, tp={self.tp})"


def fractions(
    gpu: GPUSpec, ms: float, flops: float, traffic_bytes: float, issue_per_hbm: float, sm_share: float = 1.0
) -> tuple[float, float, float]:
    """(tensor_frac, hbm_frac, compute_frac) of a call; fractions of the whole GPU's peaks."""
    if ms <= 0.0:
        return 0.0, 0.0, 0.0
    tensor = flops / (ms * 1e-3 * gpu.peak_flops)
    hbm = traffic_bytes / (ms * 1e-3 * gpu.hbm_bytes_per_s)
    return tensor, hbm, min(sm_share, tensor + issue_per_hbm * hbm)


_PREDICTORS = {
    "roofline": "adrenaline_sgl.scheduler.roofline:RooflinePredictor",
    "table": "adrenaline_sgl.scheduler.table:TablePredictor",
}


def get_predictor(name: str, gpu: str | GPUSpec, model: str | ModelSpec, **kwargs) -> Predictor:
    """Create a predictor by name (`roofline`, `table`); its module is imported only when asked for.
    Every predictor takes `tp` (tensor parallelism, default 1) and `comm` (a `CommModel`) among `kwargs`."""
    if name not in _PREDICTORS:
        raise ValueError(f"predictor must be one of {sorted(_PREDICTORS)}, got {name!r}")
    module, cls = _PREDICTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)(gpu, model, **kwargs)


def predictor_names() -> list[str]:
    return sorted(_PREDICTORS)


def validate_op_args(op: str, phase: str, num_tokens: int, sm_share: float) -> None:
    check_op(op, phase)
    check_sm_share(sm_share)
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")

"""Frozen configuration of one simulated cluster run (`SimConfig`) and its workload (`WorkloadConfig`).

Every field carries a help string (`field_help(cls)` collects them for a CLI). Validation happens in
`__post_init__` and fails with one line naming the field and its valid range. Names that belong to the
scheduler (model, GPU, predictor, offload policy) are checked against the scheduler's own registries when
the simulator is built (`adrenaline_sgl.sim.costs`), so there is one list of valid names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from adrenaline_sgl.scheduler.admission import parse_policy
from adrenaline_sgl.scheduler.bounds import (
    DEFAULT_EXECUTOR_SM_SHARE,
    DEFAULT_MEM_FRACTION,
    DEFAULT_PREFILL_RESERVE_TOKENS,
    DEFAULT_TPOT_SLO_MS,
    check_executor_sm_share,
)

DECODE_KV_ADMISSIONS = ("reserve-max", "watermark")
EXECUTOR_COLOCATIONS = ("partition", "timeshare")
WORKLOADS = ("sharegpt", "sharegpt_multiturn", "openthoughts", "azure_conv", "azure_code")


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


def field_help(cls) -> dict[str, str]:
    """{field name: help string} of a config dataclass (for argparse)."""
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def _check_range(name: str, value, lo, hi, *, lo_open: bool = False) -> None:
    ok = (value > lo if lo_open else value >= lo) and value <= hi
    if not ok or (isinstance(value, float) and math.isnan(value)):
        bracket = "(" if lo_open else "["
        raise ValueError(f"{name}={value!r} is out of range; valid: {bracket}{lo}, {hi}]")


@dataclass(frozen=True)
class SimConfig:
    """An nPmD cluster: engine limits, the offload policy and the executor's SM share. PD disaggregation
    without offload is `offload="never"` (the executor then takes no SMs)."""

    model: str = _help(
        "model name known to adrenaline_sgl.scheduler.specs (e.g. llama2-13b) or a Llama config.json path", "llama2-13b"
    )
    gpu: str = _help("GPU name known to adrenaline_sgl.scheduler.specs (e.g. a100-80g)", "a100-80g")
    predictor: str = _help("cost predictor registered in adrenaline_sgl.scheduler.cost_model", "roofline")
    prefill_gpu: str = _help(
        "device of the prefill instances (their prefill batches and the executor's attention), a name like gpu; "
        "empty = gpu. A CPU pair names two measured profiles of one core type here: one per role's software",
        "",
    )
    n_prefill: int = _help("prefill instances (tp GPUs each)", 1)
    n_decode: int = _help("decode instances (tp GPUs each)", 1)
    tp: int = _help(
        "tensor parallelism of every prefill and decode instance: the cost model's per-GPU shard (heads, FFN, "
        "KV heads / tp) plus its all-reduces; checked against the model when the simulator is built",
        1,
    )
    offload: str = _help("offload policy: never (PD disaggregation) | always | ratio:F | auto", "auto")
    executor_sm_share: float = _help(
        "fraction of the prefill GPU's SMs given to the attention executor (unless offload is never), in (0, 1)",
        DEFAULT_EXECUTOR_SM_SHARE,
    )
    executor_colocation: str = _help(
        "how the executor shares its prefill device: partition (a GPU: it keeps executor_sm_share of the SMs, "
        "prefill the rest) or timeshare (one CPU core: each runs at the whole core's speed alone, and the "
        "executor's attention takes twice as long while a prefill batch runs, its fair half of the core)",
        "partition",
    )
    decode_kv_capacity_tokens: int = _help(
        "KV tokens of each decode instance (a server's --max-total-tokens); 0 = the predictor's capacity "
        "(gpu_mem_util x HBM - weights)",
        0,
    )
    prefill_kv_capacity_tokens: int = _help(
        "KV tokens of each prefill instance, its executor's part included; 0 = the predictor's capacity", 0
    )
    prefill_token_budget: int = _help("max prompt tokens in one prefill batch (a longer prompt runs alone)", 8192)
    prefill_kv_reserve_tokens: int = _help(
        "KV tokens each prefill GPU keeps for its own batches (staging before transfer); the executor "
        "may hold offloaded KV in the rest",
        DEFAULT_PREFILL_RESERVE_TOKENS,
    )
    decode_kv_admission: str = _help(
        "decode KV admission of local requests: watermark (SGLang 0.5.23's PD decode rule, `pop_preallocated`: "
        "admit while the free KV minus decode_reserved_tokens per local request holding KV here still holds "
        "the prompt plus that headroom; grow on demand; retract SGLang's victim when a step cannot grow, "
        "restore it over PCIe later) or reserve-max (reserve prompt + requested output at admission; never "
        "retracts)",
        "watermark",
    )
    decode_reserved_tokens: int = _help("watermark admission: headroom per active request (SGLang: 512)", 512)
    max_decode_batch: int = _help("max running requests per decode instance (vLLM's max_num_seqs)", 256)
    decode_overlap_schedule: bool = _help(
        "SGLang's overlap scheduler on decode (its default): the batch of step i+1 is built while step i runs, so a "
        "request whose KV arrived gets its first token out at the next scheduler iteration and joins the step "
        "after the one in flight (docs/simulator.md, 'Overlap scheduling'); False (--disable-overlap-schedule): it "
        "joins the step starting at that iteration", True)
    offloaded_admission_first: bool = _help(
        "decode's pre-allocation queue tries offloaded requests before local ones (the plugin's "
        "decode_alloc.offloaded_first_hook: they ask decode for no KV, so they do not wait behind a local request "
        "waiting for memory); False: SGLang's FIFO order, the first request that does not fit stops admission", True)
    gpu_mem_util: float = _help(
        "fraction of HBM for weights + KV (the scheduler's default, SGLang's mem_fraction_static)", DEFAULT_MEM_FRACTION
    )
    link: str = _help("link between prefill and decode GPUs, as the cost model names it", "nvlink")
    tpot_slo_ms: float = _help("TPOT SLO the scheduler's bounds use (ms)", DEFAULT_TPOT_SLO_MS)

    def __post_init__(self):
        _check_range("n_prefill", self.n_prefill, 1, 64)
        _check_range("n_decode", self.n_decode, 1, 64)
        if isinstance(self.tp, bool) or not isinstance(self.tp, int):
            raise ValueError(f"tp={self.tp!r} must be an integer in [1, 64]")
        _check_range("tp", self.tp, 1, 64)
        check_executor_sm_share(self.executor_sm_share)
        if self.executor_colocation not in EXECUTOR_COLOCATIONS:
            raise ValueError(f"executor_colocation={self.executor_colocation!r} is unknown; valid: "
                             f"{', '.join(EXECUTOR_COLOCATIONS)}")
        _check_range("decode_kv_capacity_tokens", self.decode_kv_capacity_tokens, 0, 1 << 30)
        _check_range("prefill_kv_capacity_tokens", self.prefill_kv_capacity_tokens, 0, 1 << 30)
        if not isinstance(self.prefill_gpu, str):
            raise ValueError(f"prefill_gpu={self.prefill_gpu!r} must be a device name, or empty for gpu")
        _check_range("prefill_token_budget", self.prefill_token_budget, 1, 1 << 20)
        _check_range("prefill_kv_reserve_tokens", self.prefill_kv_reserve_tokens, 0, 1 << 24)
        if self.decode_kv_admission not in DECODE_KV_ADMISSIONS:
            raise ValueError(
                f"decode_kv_admission={self.decode_kv_admission!r} is unknown; valid: {', '.join(DECODE_KV_ADMISSIONS)}"
            )
        _check_range("decode_reserved_tokens", self.decode_reserved_tokens, 0, 1 << 20)
        _check_range("max_decode_batch", self.max_decode_batch, 1, 4096)
        _check_range("gpu_mem_util", self.gpu_mem_util, 0.0, 1.0, lo_open=True)
        _check_range("tpot_slo_ms", self.tpot_slo_ms, 0.0, 1e6, lo_open=True)
        parse_policy(self.offload, "offload")  # the scheduler's grammar: never | always | ratio:F | auto

    @property
    def offload_enabled(self) -> bool:
        """True when requests may be offloaded: any policy but never and ratio:0 (a bound of 0 offloads none)."""
        return parse_policy(self.offload, "offload") not in (("never", 0.0), ("ratio", 0.0))


@dataclass(frozen=True)
class WorkloadConfig:
    """Which requests arrive and when: a length distribution or a dataset file, and a Poisson rate."""

    name: str = _help(
        "sharegpt | sharegpt_multiturn (measured) | openthoughts (synthetic) | azure_conv | azure_code (trace)",
        "sharegpt",
    )
    request_rate: float = _help("mean Poisson arrival rate (requests/s), > 0", 2.0)
    num_requests: int = _help("requests in the run", 400)
    seed: int = _help("seed for lengths and arrivals; same seed, same run", 0)
    dataset_path: str | None = _help(
        "real dataset file instead of the synthetic lengths: ShareGPT JSON, OpenThoughts JSONL/parquet, "
        "or an Azure trace CSV (num_prefill_tokens,num_decode_tokens)",
        None,
    )
    tokenizer: str | None = _help(
        "local Hugging Face tokenizer dir for --dataset-path text; default: the 4-chars-per-token proxy", None
    )
    max_context: int = _help("model context (prompt + output tokens); Llama-2: 4096", 4096)

    def __post_init__(self):
        if self.name not in WORKLOADS:
            raise ValueError(f"workload={self.name!r} is unknown; valid: {', '.join(WORKLOADS)}")
        if not isinstance(self.request_rate, int | float) or not self.request_rate > 0 or math.isinf(
            self.request_rate
        ):
            raise ValueError(f"request_rate={self.request_rate!r} must be a finite number > 0 (requests/s)")
        _check_range("num_requests", self.num_requests, 1, 10_000_000)
        _check_range("max_context", self.max_context, 8, 1 << 20)
        if self.name.startswith("azure") and self.dataset_path is None:
            raise ValueError(
                f"workload={self.name!r} is a trace: give its CSV with --dataset-path "
                "(e.g. ../shared/data/traces/azure_conv.csv)"
            )

"""Hardware and model specifications: the fixed numbers the cost model and the bounds start from.

Everything is a frozen dataclass with units in the field names. Look-ups go through `get_gpu(name)` and
`get_model(name)`; an unknown name raises `ValueError` with one line that lists the valid names.

Sources (vendor data sheets; dense, no sparsity):
- A100-80GB SXM: 312 TFLOP/s fp16/bf16, 2039 GB/s HBM2e, 80 GiB (81920 MiB in nvidia-smi), 108 SMs,
  NVLink 3 600 GB/s bidirectional = 300 GB/s per direction.
- H100 SXM 80GB: 989.4 TFLOP/s bf16, 3350 GB/s HBM3, 80 GiB (81559 MiB usable), 132 SMs, NVLink 4
  900 GB/s bidirectional = 450 GB/s per direction.
- H200 (SXM): 989.4 TFLOP/s bf16, 4800 GB/s HBM3e, 141 GB = 140.4 GiB (143771 MiB), 132 SMs, NVLink 4.
Models: the Hugging Face `config.json` of each checkpoint (llama2-70b: meta-llama/Llama-2-70b-hf, 80 layers,
hidden 8192, 64 attention heads, 8 KV heads, intermediate 28672, vocab 32000, 4096 positions, untied).
Any other Llama-shaped checkpoint is named by the path of its `config.json` (`get_model("path/config.json")`,
see `model_from_hf_config`).

Tensor parallelism (`ModelSpec.shard(tp) -> TPShard`): what ONE GPU of a TP group holds, split the way
SGLang's (and vLLM's) parallel linear layers split it: query heads, FFN columns and the vocabulary
(embedding and LM head) TP ways; KV heads TP ways when TP divides them, else (TP a multiple of the KV
heads) one KV head per GPU, replicated TP / num_kv_heads times (sglang/srt/layers/linear.py,
QKVParallelLinear); norms and the hidden size replicated.

Measured devices: a CPU has no data sheet for what one pinned core does with our model, so CPU devices
(`cpu-*`) are measured by `python -m adrenaline_sgl.tools.profile_cpu` and registered here from the
`profiles/<name>.device.json` files it writes (GEMM peak, copy bandwidth and the link between two cores on
one core each; `num_sms` counts cores). `get_gpu("cpu-...")` then works like a GPU name everywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

_GIB = 1024**3
MEASURED_DEVICES_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass(frozen=True)
class GPUSpec:
    """One GPU. Peak numbers are the data-sheet values; efficiencies live in the cost model."""

    name: str
    peak_tflops: float  # dense fp16/bf16 tensor-core peak, 1e12 FLOP/s
    hbm_gbs: float  # HBM bandwidth, 1e9 B/s
    hbm_gib: float  # HBM capacity, GiB
    num_sms: int
    nvlink_gbs: float  # intra-node link bandwidth per direction, 1e9 B/s
    link_latency_us: float | None = None  # measured one-way latency of that link; None: cost_model's default

    def __post_init__(self) -> None:
        for field in ("peak_tflops", "hbm_gbs", "hbm_gib", "nvlink_gbs"):
            if not getattr(self, field) > 0:
                raise ValueError(f"GPUSpec.{field} must be > 0, got {getattr(self, field)!r}")
        if self.num_sms < 1:
            raise ValueError(f"GPUSpec.num_sms must be >= 1, got {self.num_sms!r}")
        if self.link_latency_us is not None and not self.link_latency_us >= 0:
            raise ValueError(f"GPUSpec.link_latency_us must be >= 0 or None, got {self.link_latency_us!r}")

    @property
    def peak_flops(self) -> float:
        """FLOP/s."""
        return self.peak_tflops * 1e12

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_gbs * 1e9

    @property
    def hbm_bytes(self) -> int:
        return int(self.hbm_gib * _GIB)

    @property
    def ridge_flops_per_byte(self) -> float:
        """Arithmetic intensity where the roofline turns from memory- to compute-bound."""
        return self.peak_flops / self.hbm_bytes_per_s


@dataclass(frozen=True)
class ModelSpec:
    """A Llama-architecture decoder (gated SiLU MLP, RoPE, GQA)."""

    name: str
    num_layers: int
    hidden_size: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_context_tokens: int
    bytes_per_param: int = 2  # fp16/bf16 weights and KV cache
    tied_embeddings: bool = False

    def __post_init__(self) -> None:
        for field in (
            "num_layers",
            "hidden_size",
            "num_q_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
            "vocab_size",
            "max_context_tokens",
            "bytes_per_param",
        ):
            if getattr(self, field) < 1:
                raise ValueError(f"ModelSpec.{field} must be >= 1, got {getattr(self, field)!r}")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelSpec.num_q_heads ({self.num_q_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )

    @property
    def q_dim(self) -> int:
        return self.num_q_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def qkv_out_dim(self) -> int:
        """Output width of the fused QKV projection."""
        return self.q_dim + 2 * self.kv_dim

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (projections, gated MLP, two RMSNorm weights)."""
        return _layer_params(self.hidden_size, self.q_dim, self.kv_dim, self.intermediate_size)

    @property
    def num_params(self) -> int:
        embed = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tied_embeddings else embed
        return self.num_layers * self.layer_params + embed + lm_head + self.hidden_size

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers."""
        return 2 * self.num_layers * self.kv_dim * self.bytes_per_param

    @property
    def kv_bytes_per_token_layer(self) -> int:
        return 2 * self.kv_dim * self.bytes_per_param

    def shard(self, tp: int = 1) -> TPShard:
        """What one GPU holds at tensor parallelism `tp` (raises for a TP the model cannot be split by)."""
        return TPShard(self, tp)


def _layer_params(h: int, q_dim: int, kv_dim: int, inter: int) -> int:
    """Decoder-layer parameters: QKV and O projections, gated MLP (gate, up, down), two RMSNorm weights."""
    return h * (q_dim + 2 * kv_dim) + q_dim * h + 3 * h * inter + 2 * h


def _split_problem(model: ModelSpec, tp: int) -> str | None:
    """What of `model` tensor parallelism `tp` does not divide (None: it splits), as SGLang's layers check."""
    kv = model.num_kv_heads
    if model.num_q_heads % tp:
        return f"its {model.num_q_heads} attention heads"
    if model.intermediate_size % tp:
        return f"its FFN width {model.intermediate_size}"
    if (tp % kv) if tp >= kv else (kv % tp):
        return f"its {kv} KV heads (TP must divide them, or be a multiple of them to replicate them)"
    return None


def valid_tps(model: ModelSpec, max_tp: int = 64) -> list[int]:
    """Every tensor parallelism up to `max_tp` the model can be split by."""
    return [t for t in range(1, max_tp + 1) if _split_problem(model, t) is None]


@dataclass(frozen=True)
class TPShard:
    """One GPU's part of a model at tensor parallelism `tp` (see the module docstring for the split)."""

    model: ModelSpec
    tp: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.tp, bool) or not isinstance(self.tp, int) or self.tp < 1:
            raise ValueError(f"tp must be an integer >= 1, got {self.tp!r}")
        why = _split_problem(self.model, self.tp)
        if why is not None:
            raise ValueError(
                f"tp={self.tp} cannot split {self.model.name}: it does not divide {why}; "
                f"valid tp: {valid_tps(self.model, max(8, self.tp))}"
            )

    @property
    def q_heads(self) -> int:
        return self.model.num_q_heads // self.tp

    @property
    def kv_heads(self) -> int:
        """KV heads this GPU holds (at least one: replicated when TP exceeds the KV heads)."""
        return max(1, self.model.num_kv_heads // self.tp)

    @property
    def kv_replicas(self) -> int:
        """GPUs of the group that hold a copy of each KV head (1 unless TP exceeds the KV heads)."""
        return max(1, self.tp // self.model.num_kv_heads)

    @property
    def intermediate_size(self) -> int:
        return self.model.intermediate_size // self.tp

    @property
    def vocab_size(self) -> int:
        """Vocabulary rows of the embedding and the LM head on this GPU (padding to 64 not modelled)."""
        return math.ceil(self.model.vocab_size / self.tp)

    @property
    def q_dim(self) -> int:
        return self.q_heads * self.model.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.model.head_dim

    @property
    def qkv_out_dim(self) -> int:
        return self.q_dim + 2 * self.kv_dim

    @property
    def layer_params(self) -> int:
        return _layer_params(self.model.hidden_size, self.q_dim, self.kv_dim, self.intermediate_size)

    @property
    def num_params(self) -> int:
        m = self.model
        embed = self.vocab_size * m.hidden_size
        lm_head = 0 if m.tied_embeddings else embed
        return m.num_layers * self.layer_params + embed + lm_head + m.hidden_size

    @property
    def weight_bytes(self) -> int:
        """Weight bytes on this GPU."""
        return self.num_params * self.model.bytes_per_param

    @property
    def kv_bytes_per_token_layer(self) -> int:
        return 2 * self.kv_dim * self.model.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes one token takes on this GPU (all layers); every GPU of the group holds its part of every token."""
        return self.model.num_layers * self.kv_bytes_per_token_layer

    def kv_capacity_bytes(self, gpu: GPUSpec, mem_fraction: float) -> float:
        """KV bytes this GPU holds: mem_fraction of its HBM minus its weights (0 when they do not fit);
        activation workspace not subtracted (as `bounds.kv_capacity_bytes`)."""
        if not 0.0 < mem_fraction <= 1.0:
            raise ValueError(f"mem_fraction must be in (0, 1], got {mem_fraction!r}")
        return max(0.0, mem_fraction * gpu.hbm_bytes - self.weight_bytes)

    def kv_capacity_tokens(self, gpu: GPUSpec, mem_fraction: float) -> int:
        """Tokens of KV the whole TP instance holds (each GPU holds its heads of each token)."""
        return int(self.kv_capacity_bytes(gpu, mem_fraction) // self.kv_bytes_per_token)

    def check_fits(self, gpu: GPUSpec, mem_fraction: float, min_kv_tokens: int = 1) -> None:
        """Raise a one-line error when the weights leave fewer than `min_kv_tokens` of KV on `gpu`, naming
        the smallest TP that would fit."""
        have = self.kv_capacity_tokens(gpu, mem_fraction)
        if have >= min_kv_tokens:
            return
        m = self.model
        fits = [t for t in valid_tps(m) if TPShard(m, t).kv_capacity_tokens(gpu, mem_fraction) >= min_kv_tokens]
        hint = f"use tp >= {fits[0]}" if fits else "no TP up to 64 fits"
        raise ValueError(
            f"{m.name} does not fit on {gpu.name} at tp={self.tp}: {self.weight_bytes / _GIB:.1f} GiB of weights "
            f"per GPU leave {have} KV tokens of {mem_fraction:g} x {gpu.hbm_gib:g} GiB "
            f"(need >= {min_kv_tokens}); {hint}"
        )


HF_ARCHITECTURES = ("LlamaForCausalLM",)  # same shapes as ModelSpec: gated SiLU MLP, RMSNorm, RoPE, GQA
HF_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


def model_from_hf_config(path: str | Path) -> ModelSpec:
    """A ModelSpec from a Hugging Face `config.json` of a Llama-architecture checkpoint, named by its path.

    Read: num_hidden_layers, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads
    (default: the attention heads), head_dim (default hidden_size / heads), vocab_size,
    max_position_embeddings, torch_dtype (or `dtype`, newer transformers; default bfloat16) and
    tie_word_embeddings. Anything that is not a Llama (another architecture, a quantized checkpoint, a
    non-SiLU MLP) is refused with one line: its costs would be wrong, not approximate.
    """
    path = Path(path)
    where = f"model config {str(path)!r}"
    try:
        cfg = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"{where} cannot be read: {err.strerror or err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON: {err.msg} at line {err.lineno}") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"{where} is not a JSON object")
    archs = cfg.get("architectures") or []
    ok = any(a in HF_ARCHITECTURES for a in archs) if archs else cfg.get("model_type") == "llama"
    if not ok:
        what = archs or cfg.get("model_type") or "none given"
        raise ValueError(
            f"{where}: architecture {what} is not Llama-shaped; supported: {list(HF_ARCHITECTURES)} "
            "(model_type 'llama')"
        )
    if cfg.get("quantization_config"):
        raise ValueError(f"{where}: quantized checkpoints are not modelled (fp16/bf16/fp32 weights only)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: hidden_act {cfg['hidden_act']!r} is not modelled (Llama: silu)")

    def need(key: str) -> int:
        if key not in cfg:
            raise ValueError(f"{where} lacks {key!r} (a Llama config.json has it)")
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: {key} must be an integer, got {value!r}")
        return value

    heads, hidden = need("num_attention_heads"), need("hidden_size")
    kv_heads = need("num_key_value_heads") if "num_key_value_heads" in cfg else heads
    if "head_dim" in cfg and cfg["head_dim"] is not None:
        head_dim = need("head_dim")
    elif heads > 0 and hidden % heads == 0:
        head_dim = hidden // heads
    else:
        raise ValueError(f"{where}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
    if dtype not in HF_DTYPE_BYTES:
        raise ValueError(f"{where}: torch_dtype {dtype!r} is not modelled; valid: {sorted(HF_DTYPE_BYTES)}")
    try:
        return ModelSpec(
            str(path),
            num_layers=need("num_hidden_layers"),
            hidden_size=hidden,
            num_q_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=need("intermediate_size"),
            vocab_size=need("vocab_size"),
            max_context_tokens=need("max_position_embeddings"),
            bytes_per_param=HF_DTYPE_BYTES[dtype],
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def load_device(path: str | Path) -> GPUSpec:
    """The device spec in a `<name>.device.json` (its `spec` object); errors name the file."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())["spec"]
        unknown = sorted(set(spec) - {f.name for f in fields(GPUSpec)})
        if unknown:
            raise ValueError(f"unknown spec keys {unknown}")
        device = GPUSpec(**spec)
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"device file {path}: {err}") from err
    if f"{device.name}.device.json" != path.name:
        raise ValueError(f"device file {path} holds spec {device.name!r}; name it {device.name}.device.json")
    return device


def _measured_devices(folder: Path = MEASURED_DEVICES_DIR) -> dict[str, GPUSpec]:
    return {d.name: d for d in map(load_device, sorted(folder.glob("*.device.json")))}


GPUS: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        GPUSpec("a100-80g", peak_tflops=312.0, hbm_gbs=2039.0, hbm_gib=80.0, num_sms=108, nvlink_gbs=300.0),
        GPUSpec("h100-sxm", peak_tflops=989.4, hbm_gbs=3350.0, hbm_gib=79.6, num_sms=132, nvlink_gbs=450.0),
        GPUSpec("h200", peak_tflops=989.4, hbm_gbs=4800.0, hbm_gib=140.4, num_sms=132, nvlink_gbs=450.0),
    )
}

def _register_measured(found: dict[str, GPUSpec]) -> None:
    clash = sorted(set(found) & set(GPUS))
    if clash:
        raise ValueError(f"measured device files {clash} reuse the names of data-sheet GPUs; rename them")
    GPUS.update(found)


_register_measured(_measured_devices())

MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec("llama2-7b", 32, 4096, 32, 32, 128, 11008, 32000, max_context_tokens=4096),
        ModelSpec("llama2-13b", 40, 5120, 40, 40, 128, 13824, 32000, max_context_tokens=4096),
        ModelSpec("llama2-70b", 80, 8192, 64, 8, 128, 28672, 32000, max_context_tokens=4096),
        ModelSpec("llama3-8b", 32, 4096, 32, 8, 128, 14336, 128256, max_context_tokens=8192),
        ModelSpec("llama3-70b", 80, 8192, 64, 8, 128, 28672, 128256, max_context_tokens=8192),
        ModelSpec("smollm2-135m", 30, 576, 9, 3, 64, 1536, 49152, max_context_tokens=8192, tied_embeddings=True),
    )
}


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    """The GPU spec for `name` (a spec passes through)."""
    if isinstance(name, GPUSpec):
        return name
    if name not in GPUS:
        raise ValueError(f"gpu must be one of {sorted(GPUS)}, got {name!r}")
    return GPUS[name]


def get_model(name: str | ModelSpec) -> ModelSpec:
    """The model spec for `name`: a known name, or the path of a Llama `config.json` (any name ending in
    `.json`; see `model_from_hf_config`). A spec passes through."""
    if isinstance(name, ModelSpec):
        return name
    if isinstance(name, str) and name.endswith(".json"):
        return model_from_hf_config(name)
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)} or the path of a Llama config.json, got {name!r}")
    return MODELS[name]

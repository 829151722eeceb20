"""Hardware and model specifications: the fixed numbers the cost model and the bounds start from.

Everything is a frozen dataclass with units in the field names. Look-ups go through `get_gpu(name)` and
`get_model(name)`; an unknown name raises `ValueError` with one line that lists the valid names.

Sources (vendor data sheets; dense, no sparsity):
- A100-80GB SXM: 312 TFLOP/s fp16/bf16, 2039 GB/s HBM2e, 80 GiB (81920 MiB in nvidia-smi), 108 SMs,
  NVLink 3 600 GB/s bidirectional = 300 GB/s per direction.
- H100 SXM 80GB: 989.4 TFLOP/s bf16, 3350 GB/s HBM3, 80 GiB (81559 MiB usable), 132 SMs, NVLink 4
  900 GB/s bidirectional = 450 GB/s per direction.
- H200 (SXM): 989.4 TFLOP/s bf16, 4800 GB/s HBM3e, 141 GB = 140.4 GiB (143771 MiB), 132 SMs, NVLink 4.
Models: the Hugging Face `config.json` of each checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

_GIB = 1024**3


@dataclass(frozen=True)
class GPUSpec:
    """One GPU. Peak numbers are the data-sheet values; efficiencies live in the cost model."""

    name: str
    peak_tflops: float  # dense fp16/bf16 tensor-core peak, 1e12 FLOP/s
    hbm_gbs: float  # HBM bandwidth, 1e9 B/s
    hbm_gib: float  # HBM capacity, GiB
    num_sms: int
    nvlink_gbs: float  # intra-node link bandwidth per direction, 1e9 B/s

    def __post_init__(self) -> None:
        for field in ("peak_tflops", "hbm_gbs", "hbm_gib", "nvlink_gbs"):
            if not getattr(self, field) > 0:
                raise ValueError(f"GPUSpec.{field} must be > 0, got {getattr(self, field)!r}")
        if self.num_sms < 1:
            raise ValueError(f"GPUSpec.num_sms must be >= 1, got {self.num_sms!r}")

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
        h = self.hidden_size
        return h * self.qkv_out_dim + self.q_dim * h + 3 * h * self.intermediate_size + 2 * h

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


GPUS: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        GPUSpec("a100-80g", peak_tflops=312.0, hbm_gbs=2039.0, hbm_gib=80.0, num_sms=108, nvlink_gbs=300.0),
        GPUSpec("h100-sxm", peak_tflops=989.4, hbm_gbs=3350.0, hbm_gib=79.6, num_sms=132, nvlink_gbs=450.0),
        GPUSpec("h200", peak_tflops=989.4, hbm_gbs=4800.0, hbm_gib=140.4, num_sms=132, nvlink_gbs=450.0),
    )
}

MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec("llama2-7b", 32, 4096, 32, 32, 128, 11008, 32000, max_context_tokens=4096),
        ModelSpec("llama2-13b", 40, 5120, 40, 40, 128, 13824, 32000, max_context_tokens=4096),
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
    """The model spec for `name` (a spec passes through)."""
    if isinstance(name, ModelSpec):
        return name
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name]

"""A modelled colocation profile for when no GPU measurement is committed. Modelled, not measured.

- Executor attention bandwidth: a saturating curve f(s) = f_max * (1 - exp(-s / tau)) of the HBM peak,
  fitted through two points the paper publishes for Llama-2-7B decode attention on an A100
  (`../shared/design/adrenaline.md`): about 20% of the SMs reach about 60% of HBM bandwidth, and the whole
  GPU reaches about 91% (the per-kernel decode-attention figure at batch 64 and 80).
- Prefill latency: the roofline of a Llama-2-7B layer per operator, max(flops / (s * peak * mfu),
  bytes / (f(s) * hbm)), with the paper's measured prefill compute utilization as `mfu`. A compute-bound
  roofline slows down linearly as SMs are taken away, so this curve is pessimistic where the paper saw a
  sub-linear slowdown; contention through HBM bandwidth is not modelled (prefill_contended_ms empty).

`python -m adrenaline_sgl.tools.colocation_modelled --out DIR` writes it; the committed copy is
`profiles/modelled-a100-llama2-7b/` (a test checks that it is what this code writes).
"""

from __future__ import annotations

import argparse
import math

from adrenaline_sgl.colocation.profiles import AttentionPoint, PrefillPoint, Profile, write_profile
from adrenaline_sgl.scheduler.specs import GPUSpec, ModelSpec, get_gpu, get_model

NAME = "modelled-a100-llama2-7b"
SHARES = tuple(i / 16 for i in range(1, 17))  # 1/16 .. the whole device
TOKENS = (512, 1024, 2048, 4096)
A100 = get_gpu("a100-80g")
A100_LABEL = "NVIDIA A100-SXM4-80GB (model)"  # the provenance's gpu name (this is a model of the card)
PREFILL_MFU = 0.67  # fraction of peak a prefill GEMM reaches at full device (paper: 67-69% from 1024 tokens)
LLAMA2_7B = get_model("llama2-7b")
CALIBRATION = ((0.2, 0.60), (1.0, 0.91))  # (SM share, fraction of HBM peak), paper, A100


def fit_bandwidth_curve(points=CALIBRATION) -> tuple[float, float]:
    """(f_max, tau) of f(s) = f_max * (1 - exp(-s / tau)) through two (share, fraction) points."""
    (s1, f1), (s2, f2) = points
    if not (0 < s1 < s2 <= 1 and 0 < f1 < f2 and f1 / f2 > s1 / s2):
        raise ValueError(f"calibration points {points} do not describe a saturating curve")
    ratio = f1 / f2

    def g(tau: float) -> float:
        return (1 - math.exp(-s1 / tau)) / (1 - math.exp(-s2 / tau)) - ratio

    lo, hi = 1e-4, 100.0  # g(lo) > 0 (ratio of ~1), g(hi) < 0 (ratio -> s1/s2)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if g(mid) > 0 else (lo, mid)
    tau = (lo + hi) / 2
    return f2 / (1 - math.exp(-s2 / tau)), tau


def bandwidth_fraction(sm_share: float, points=CALIBRATION) -> float:
    f_max, tau = fit_bandwidth_curve(points)
    return f_max * (1 - math.exp(-sm_share / tau))


def prefill_layer_ms(tokens: int, sm_share: float, gpu: GPUSpec = A100, m: ModelSpec = LLAMA2_7B,
                     mfu: float = PREFILL_MFU) -> float:
    """Roofline time (ms) of one Llama layer's prefill over `tokens` tokens on `sm_share` of the SMs."""
    t, h, b, ffn = tokens, m.hidden_size, m.bytes_per_param, m.intermediate_size
    gemms = [(h, m.qkv_out_dim), (m.q_dim, h), (h, 2 * ffn), (ffn, h)]  # (in, out) of each GEMM
    ops = [(2 * t * i * o, b * (i * o + t * (i + o))) for i, o in gemms]  # (flops, bytes)
    attn_flops = 2 * 2 * m.q_dim * t * t / 2  # QK^T and PV, causal half
    ops.append((attn_flops, b * t * (2 * m.q_dim + 2 * m.kv_dim)))
    flops_per_ms = sm_share * gpu.peak_tflops * mfu * 1e9
    bytes_per_ms = bandwidth_fraction(sm_share) * gpu.hbm_gbs * 1e6
    return sum(max(f / flops_per_ms, by / bytes_per_ms) for f, by in ops)


def attention_point(sm_share: float, batch: int, context: int, gpu: GPUSpec = A100, m: ModelSpec = LLAMA2_7B):
    gbs = bandwidth_fraction(sm_share) * gpu.hbm_gbs
    kv_bytes = batch * context * m.kv_bytes_per_token_layer
    num_sms = max(1, round(sm_share * gpu.num_sms))
    return AttentionPoint(sm_share, num_sms, gpu.num_sms, batch, context, kv_bytes / gbs / 1e6, gbs, gpu.hbm_gbs)


def modelled_profile(gpu: GPUSpec = A100, m: ModelSpec = LLAMA2_7B, batch: int = 64, context: int = 1024,
                     label: str = A100_LABEL, mfu: float = PREFILL_MFU) -> Profile:
    f_max, tau = fit_bandwidth_curve()
    provenance = {
        "source": "modelled",
        "title": "modelled, not measured",
        "gpu": label,
        "total_sms": str(gpu.num_sms),
        "compute_capability": "8.0",
        "model": "Llama-2-7B shape (hidden 4096, 32 heads, head_dim 128, ffn 11008), fp16",
        "attention": f"f(s)=f_max*(1-exp(-s/tau)) of HBM peak, f_max={f_max:.4f} tau={tau:.4f}, fitted to "
        f"paper A100 points {CALIBRATION}",
        "prefill": f"per-operator roofline, peak {gpu.peak_tflops} TFLOP/s x mfu {mfu}, HBM {gpu.hbm_gbs} GB/s "
        "x f(s); contention not modelled",
        "reference": "ref_gbs is the HBM peak (the paper reports % of HBM bandwidth), not a measured copy",
        "command": "python -m adrenaline_sgl.tools.colocation_modelled --out adrenaline_sgl/colocation/profiles/"
        + NAME,
    }
    prefill = tuple(
        PrefillPoint(s, max(1, round(s * gpu.num_sms)), gpu.num_sms, t, m.num_layers,
                     m.num_layers * prefill_layer_ms(t, s, gpu, m, mfu))
        for t in TOKENS
        for s in SHARES
    )
    attention = tuple(attention_point(s, batch, context, gpu, m) for s in SHARES)
    return Profile(NAME, provenance, prefill, attention)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="profile folder to write (prefill.csv, attention.csv)")
    args = ap.parse_args(argv)
    print(write_profile(modelled_profile(), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

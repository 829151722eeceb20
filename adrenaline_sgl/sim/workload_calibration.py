"""Which ShareGPT sample the paper's calibration data points to: a check that can fail.

The paper's Llama-2 7B / A100-80GB / ShareGPT calibration data (docs/simulator.md, "Workloads"; the paper's
"Calibration data" section) states two things that depend on the requests' lengths, not only on the
hardware: attention is 69.5% of decode time at batch 80, and decode HBM ramps to about 75.5%, of which the
KV cache is 57.3%. Each implies a mean in-flight context per decoding request:

- attention share: the roofline predictor (calibrated on the paper's per-kernel data only) gives the share
  of attention in a batch-80 decode step as a function of the mean context L; solving share(L) = 69.5% gives
  `context_for_attention_share()`;
- KV share: 57.3% of the GPU's HBM in KV tokens, over 80 requests, gives `kv_tokens_per_request()`. That
  the batch was 80 when the KV reading was taken is an assumption (the paper gives the ramp, not the
  batch); 80 is the largest batch of its decode sweep.

A sample's in-flight context is what a decode step sees on average: a request sits in the batch for its
output length o, with p + o/2 tokens on average, so requests weigh by o: sum(o (p + o/2)) / sum(o)
(`in_flight_context`). `simple_context` (mean p + mean o / 2) is quoted beside it; it ignores that weighting.
The band is the two implied contexts widened by BAND_TOL either side: one published measurement each, vLLM
rounds KV to 16-token blocks, and the batch at the KV reading is assumed.

    python -m adrenaline_sgl.tools.workload_check      # the table for both ShareGPT samples
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adrenaline_sgl.scheduler.cost_model import Predictor, get_predictor

from .workloads import fit_context, measured_pairs

GPU, MODEL = "a100-80g", "llama2-7b"  # the calibration data's setup
PAPER_BATCH = 80
PAPER_ATTN_SHARE = 0.695  # attention's share of decode time at batch 80
PAPER_KV_HBM_FRAC = 0.573  # KV cache's share of decode HBM (of 75.5% in all)
BAND_TOL = 0.10


def _predictor() -> Predictor:
    return get_predictor("roofline", GPU, MODEL)


def attention_share(context_tokens: float, batch: int = PAPER_BATCH) -> float:
    """Attention's share of one decode step of `batch` requests of `context_tokens` KV tokens each."""
    p = _predictor()
    total = int(round(batch * context_tokens))
    return p.decode_attn_ms(batch, total) / p.decode_step_ms(batch, total)


def context_for_attention_share(share: float = PAPER_ATTN_SHARE, batch: int = PAPER_BATCH) -> float:
    """The mean context at which attention is `share` of a batch-`batch` decode step (bisection; the share
    rises with the context)."""
    lo, hi = 1.0, float(get_predictor("roofline", GPU, MODEL).model.max_context_tokens)
    if not attention_share(lo, batch) < share < attention_share(hi, batch):
        raise ValueError(f"attention share {share} is out of the model's reach at batch {batch}")
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if attention_share(mid, batch) < share else (lo, mid)
    return (lo + hi) / 2


def kv_tokens_per_request(kv_hbm_frac: float = PAPER_KV_HBM_FRAC, batch: int = PAPER_BATCH) -> float:
    """KV tokens per request when `kv_hbm_frac` of the GPU's HBM holds the KV of `batch` requests."""
    p = _predictor()
    return kv_hbm_frac * p.gpu.hbm_bytes / p.shard.kv_bytes_per_token / batch


def calibration_band() -> tuple[float, float]:
    """(low, high) mean in-flight context the calibration data allows (module docstring)."""
    implied = (context_for_attention_share(), kv_tokens_per_request())
    return min(implied) * (1 - BAND_TOL), max(implied) * (1 + BAND_TOL)


def in_flight_context(prompt: np.ndarray, output: np.ndarray) -> float:
    """Mean KV tokens of a request in a decode step: requests weighed by their decode steps (output)."""
    prompt, output = prompt.astype(np.float64), output.astype(np.float64)
    return float((output * (prompt + output / 2)).sum() / output.sum())


def simple_context(prompt: np.ndarray, output: np.ndarray) -> float:
    """Mean prompt + half the mean output (every request weighed alike)."""
    return float(prompt.mean() + output.mean() / 2)


@dataclass(frozen=True)
class WorkloadCheck:
    """A measured sample's lengths within the context and what the calibration says of them."""

    name: str
    mean_prompt_tokens: float
    mean_output_tokens: float
    in_flight_tokens: float  # output-weighted (`in_flight_context`)
    simple_tokens: float  # mean prompt + mean output / 2
    attn_share: float  # at batch 80, at in_flight_tokens
    band: tuple[float, float]

    @property
    def within_band(self) -> bool:
        lo, hi = self.band
        return lo <= self.in_flight_tokens <= hi


def check(name: str, max_context: int = 4096) -> WorkloadCheck:
    prompt, output = fit_context(*measured_pairs(name), max_context)
    ctx = in_flight_context(prompt, output)
    return WorkloadCheck(name, float(prompt.mean()), float(output.mean()), ctx, simple_context(prompt, output),
                         attention_share(ctx), calibration_band())  # fmt: skip

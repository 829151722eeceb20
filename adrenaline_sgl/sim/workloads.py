"""Request streams for the simulator: (prompt, output) lengths and Poisson arrival times.

Defaults are synthetic length distributions whose parameters come from public statistics (below); a real
dataset file replaces them through `WorkloadConfig.dataset_path` (see `adrenaline_sgl.sim.datasets`).

Synthetic distributions (log-normal, clipped to [MIN_TOKENS, context]; means are of the unclipped law):
- sharegpt: prompt mean 161, output mean 338 tokens. Source: the vLLM paper (Kwon et al., SOSP'23, Fig. 11,
  ShareGPT with the OPT tokenizer). The log-normal shape and its sigmas (1.0 prompt, 0.9 output) are our
  choice; the published means are what we match.
- openthoughts: prompt mean 250, output mean 2600 tokens. OpenThoughts-114k (open-thoughts/OpenThoughts-114k
  on Hugging Face) pairs short math/code/science problems with DeepSeek-R1 reasoning traces that run several
  thousand tokens; Llama-2's 4096-token context truncates them. These numbers are our reading of the dataset
  card, not measured here: use --dataset-path with the real file for measured lengths.

Lengths and arrivals use separate seeded streams, so two runs at different rates see the same requests
(common random numbers) and a run is a pure function of (workload config, seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import WorkloadConfig

MIN_TOKENS = 4  # SGLang's bench_serving drops ShareGPT pairs shorter than this; we clip to it


@dataclass(frozen=True)
class LengthLaw:
    """Log-normal law of a token count, parameterized by its mean and the sigma of log(tokens)."""

    mean_tokens: float
    sigma: float

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        mu = math.log(self.mean_tokens) - self.sigma**2 / 2  # E[X] = exp(mu + sigma^2/2)
        return np.rint(rng.lognormal(mu, self.sigma, size=n)).astype(np.int64)


SYNTHETIC = {
    "sharegpt": (LengthLaw(161.0, 1.0), LengthLaw(338.0, 0.9)),
    "openthoughts": (LengthLaw(250.0, 0.8), LengthLaw(2600.0, 0.6)),
}


@dataclass(frozen=True)
class Requests:
    """A request stream as arrays (struct of arrays, index = request id)."""

    arrival_s: np.ndarray  # [n] float64, seconds from the start, non-decreasing
    prompt_len: np.ndarray  # [n] int64 tokens
    output_len: np.ndarray  # [n] int64 tokens (>= 1), the number the request asks for

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def total_output_tokens(self) -> int:
        return int(self.output_len.sum())


def clip_to_context(prompt: np.ndarray, output: np.ndarray, max_context: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip lengths to [MIN_TOKENS, ...] and prompt + output <= max_context (prompt keeps priority)."""
    prompt = np.clip(prompt, MIN_TOKENS, max_context - MIN_TOKENS)
    output = np.clip(output, MIN_TOKENS, None)
    output = np.minimum(output, max_context - prompt)
    return prompt.astype(np.int64), output.astype(np.int64)


def synthetic_lengths(name: str, n: int, seed: int, max_context: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_len [n], output_len [n]) drawn from the synthetic law of workload `name`."""
    if name not in SYNTHETIC:
        raise ValueError(f"workload={name!r} has no synthetic lengths; valid: {', '.join(SYNTHETIC)}")
    prompt_law, output_law = SYNTHETIC[name]
    rng = np.random.default_rng([seed, 0])
    return clip_to_context(prompt_law.sample(rng, n), output_law.sample(rng, n), max_context)


def poisson_arrivals(rate_per_s: float, n: int, seed: int) -> np.ndarray:
    """Arrival times [n] (s) of a Poisson process of `rate_per_s`, the first at its first gap."""
    if not rate_per_s > 0:
        raise ValueError(f"request_rate={rate_per_s!r} must be > 0 (requests/s)")
    rng = np.random.default_rng([seed, 1])
    return np.cumsum(rng.exponential(1.0 / rate_per_s, size=n))


def make_requests(cfg: WorkloadConfig) -> Requests:
    """The request stream of a workload config (synthetic or from its dataset file)."""
    if cfg.dataset_path is None:
        prompt, output = synthetic_lengths(cfg.name, cfg.num_requests, cfg.seed, cfg.max_context)
    else:
        from .datasets import load_lengths  # file parsing only when a file is given

        pairs_prompt, pairs_output = load_lengths(cfg.dataset_path, cfg.name, cfg.tokenizer)
        prompt, output = sample_pairs(pairs_prompt, pairs_output, cfg.num_requests, cfg.seed, cfg.max_context)
    return Requests(poisson_arrivals(cfg.request_rate, cfg.num_requests, cfg.seed), prompt, output)


def sample_pairs(
    prompt: np.ndarray, output: np.ndarray, n: int, seed: int, max_context: int
) -> tuple[np.ndarray, np.ndarray]:
    """n (prompt, output) pairs from a dataset: drop ones that cannot fit the context, shuffle, cycle."""
    keep = (prompt >= 1) & (output >= 1) & (prompt <= max_context - MIN_TOKENS)
    prompt, output = prompt[keep], output[keep]
    if len(prompt) == 0:
        raise ValueError(f"dataset has no request that fits a {max_context}-token context")
    order = np.random.default_rng([seed, 2]).permutation(len(prompt))
    idx = order[np.arange(n) % len(order)]
    return clip_to_context(prompt[idx], output[idx], max_context)

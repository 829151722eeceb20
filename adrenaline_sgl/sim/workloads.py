"""Request streams for the simulator: (prompt, output) lengths and Poisson arrival times.

Default lengths per workload (a real dataset file replaces them through `WorkloadConfig.dataset_path`, see
`adrenaline_sgl.sim.datasets`):

- sharegpt: measured pairs, not a fitted law. `data/sharegpt_llama2.csv` holds the first-turn (prompt,
  completion) lengths of 17,400 ShareGPT_V3_unfiltered_cleaned_split conversations counted with the Llama-2
  tokenizer (its header says where the file and the tokenizer came from). A run samples pairs as SGLang's
  bench_serving does with `--sharegpt-context-len 4096`: both at least 2 tokens, prompt + output within the
  model's context (pairs over it are dropped, not clipped). Resulting means: prompt 347, output 230 tokens
  (medians 154 and 138). Cross-check against published runs of the same file: vLLM's benchmark (prompt
  <= 1024, prompt + output <= 2048) gives 248 / 233 here with Llama-2's tokenizer, and 230 / 203 in vLLM
  PR 18566 (1000 prompts) and 227 / 188 in SGLang issue 1639 (2000 prompts), both with the Llama-3 tokenizer,
  whose 128k vocabulary needs about 10% fewer tokens than Llama-2's 32k one.
  The earlier default (vLLM paper, OPT tokenizer: 161 / 338) is not what these tools send with Llama-2:
  its 338 matches every answer of a conversation (334 here), not the first-turn pairs the tools send.
  NOTE: no ShareGPT filter or tokenizer gives a mean output near 500 tokens (what the paper's low-load
  throughput divided by its rate suggests): prompt + output does (481 with vLLM's filter, the
  paper's baseline being vLLM 0.6, whose benchmark prints a total-token throughput): see
  docs/simulator.md, "Workloads".
- sharegpt_multiturn: measured pairs, one per ShareGPT answer with the conversation before it as its
  prompt (`data/sharegpt_multiturn_llama2.csv`: 20,000 of the 61,236 answers of the same 17,671
  conversations, a seeded subsample; its header gives the counting rule and provenance). Sampled with the
  same rule as sharegpt. Means within 4096: prompt 933, output 333 tokens (medians 858 and 298); all
  61,236 answers give 932 / 334. This is the sample the paper's calibration data points to: attention's
  69.5% of a batch-80 decode step and the KV's 57.3% of HBM both need about 1,170-1,220 tokens in flight
  per request; this sample has 1,244, the first-turn one 539 (`sim/workload_calibration.py`).
- openthoughts: synthetic log-normal, prompt mean 250, output mean 2600 tokens before clipping to the
  context (clipped to [MIN_TOKENS, context], means of the unclipped law). OpenThoughts-114k pairs short
  problems with DeepSeek-R1 traces: 2.77 GB of rows for 113,957 examples in a faithful conversion's
  dataset_info (about 24 kB a row, the system prompt and reference solution included) puts the mean trace
  near 5,000-6,000 Llama-2 tokens, so Llama-2's 4096-token context binds for most of them; the law's
  parameters are our reading, not measured: use --dataset-path with the real file for measured lengths.

Lengths and arrivals use separate seeded streams, so two runs at different rates see the same requests
(common random numbers) and a run is a pure function of (workload config, seed).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from .config import WorkloadConfig

MIN_TOKENS = 4  # the synthetic laws are clipped to at least this many tokens
MIN_PAIR_TOKENS = 2  # SGLang's bench_serving drops dataset pairs whose prompt or output is shorter


@dataclass(frozen=True)
class LengthLaw:
    """Log-normal law of a token count, parameterized by its mean and the sigma of log(tokens)."""

    mean_tokens: float
    sigma: float

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        mu = math.log(self.mean_tokens) - self.sigma**2 / 2  # E[X] = exp(mu + sigma^2/2)
        return np.rint(rng.lognormal(mu, self.sigma, size=n)).astype(np.int64)


SYNTHETIC = {
    "openthoughts": (LengthLaw(250.0, 0.8), LengthLaw(2600.0, 0.6)),
}
# Workloads whose default lengths are measured pairs shipped with the package (file in adrenaline_sgl/sim/data).
MEASURED = {"sharegpt": "sharegpt_llama2.csv", "sharegpt_multiturn": "sharegpt_multiturn_llama2.csv"}


@cache
def measured_pairs(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_len [k], output_len [k]) of a shipped measured sample, unfiltered (see the module docstring)."""
    if name not in MEASURED:
        raise ValueError(f"workload={name!r} has no measured sample; valid: {', '.join(MEASURED)}")
    text = resources.files(__package__).joinpath("data", MEASURED[name]).read_text()
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    prompt = np.array([int(r["prompt_tokens"]) for r in rows], dtype=np.int64)
    output = np.array([int(r["output_tokens"]) for r in rows], dtype=np.int64)
    prompt.flags.writeable = output.flags.writeable = False
    return prompt, output


def default_lengths(name: str, n: int, seed: int, max_context: int) -> tuple[np.ndarray, np.ndarray]:
    """n (prompt, output) pairs of a workload without a dataset file: its measured sample or synthetic law."""
    if name in MEASURED:
        return sample_pairs(*measured_pairs(name), n, seed, max_context)
    return synthetic_lengths(name, n, seed, max_context)


def mean_lengths(name: str, max_context: int = 4096) -> tuple[float, float]:
    """(mean prompt, mean output) tokens of a workload's default lengths within the context (what a random-ids
    benchmark sends in their place)."""
    if name in MEASURED:
        prompt, output = fit_context(*measured_pairs(name), max_context)
        return float(prompt.mean()), float(output.mean())
    prompt, output = synthetic_lengths(name, 20_000, 0, max_context)
    return float(prompt.mean()), float(output.mean())


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
        prompt, output = default_lengths(cfg.name, cfg.num_requests, cfg.seed, cfg.max_context)
    else:
        from .datasets import load_lengths  # file parsing only when a file is given

        pairs_prompt, pairs_output = load_lengths(cfg.dataset_path, cfg.name, cfg.tokenizer)
        prompt, output = sample_pairs(pairs_prompt, pairs_output, cfg.num_requests, cfg.seed, cfg.max_context)
    return Requests(poisson_arrivals(cfg.request_rate, cfg.num_requests, cfg.seed), prompt, output)


def fit_context(prompt: np.ndarray, output: np.ndarray, max_context: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs bench_serving keeps: prompt and output of at least MIN_PAIR_TOKENS, prompt + output within the
    context (its `--sharegpt-context-len`; longer pairs are dropped, not clipped)."""
    keep = (prompt >= MIN_PAIR_TOKENS) & (output >= MIN_PAIR_TOKENS) & (prompt + output <= max_context)
    return prompt[keep], output[keep]


def sample_pairs(
    prompt: np.ndarray, output: np.ndarray, n: int, seed: int, max_context: int
) -> tuple[np.ndarray, np.ndarray]:
    """n (prompt, output) pairs from a dataset: keep those that fit the context (`fit_context`), shuffle, cycle."""
    prompt, output = fit_context(prompt, output, max_context)
    if len(prompt) == 0:
        raise ValueError(f"dataset has no request that fits a {max_context}-token context")
    order = np.random.default_rng([seed, 2]).permutation(len(prompt))
    idx = order[np.arange(n) % len(order)]
    return prompt[idx].astype(np.int64), output[idx].astype(np.int64)

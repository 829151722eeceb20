"""The emulator's load generator: a given request stream, open loop, against a proxy's /generate.

Why not `sglang.benchmark.serving` (MODE=real uses it): the comparison with the simulator needs the *same*
requests (prompt and output lengths) arriving at the *same* times, and per-request timestamps; the stream
comes from the simulator's workload generator (`adrenaline_sgl.sim.workloads.make_requests`), and every
metric is derived by the simulator's own `sim.metrics` from the records this returns.

Each request is one streamed `/generate` with `input_ids` (deterministic random ids of the prompt length),
`max_new_tokens` = its output length and `ignore_eos` (as bench_serving sends), and a per-request
`stream_interval` larger than any output: SGLang streams the first token at once (TTFT) and then only the
final chunk, which keeps the tokenizer/detokenizer/HTTP work per token off the shared CPUs. Arrivals are
`arrival_s x clock_scale` after the start; the records' times are divided by the clock scale again, so
they are in emulated seconds from the start.

A request that fails (HTTP error, an error chunk, fewer tokens than asked, a timeout) is recorded with its
error; the caller decides (experiments count completed requests and say which failed).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass, field

from adrenaline_sgl.emulate.tokens import FIRST_ID

STREAM_INTERVAL = 1_000_000  # larger than any output: first token at once, then the final chunk only


@dataclass(frozen=True)
class RequestSpec:
    rid: str
    arrival_s: float  # emulated seconds from the start of the run
    prompt_len: int
    output_len: int


@dataclass
class RequestResult:
    rid: str
    arrival_s: float
    prompt_len: int
    output_len: int
    first_token_s: float = math.nan  # emulated seconds from the start
    finish_s: float = math.nan
    tokens_out: int = 0
    error: str = ""
    sent_wall_s: float = math.nan  # time.monotonic() when it was sent (to align with the servers' traces)
    extra: dict = field(default_factory=dict)


def prompt_ids(rid: str, n: int, vocab_size: int) -> list[int]:
    """Deterministic random token ids of a prompt (ordinary vocabulary entries, no prefix shared by design)."""
    rng = random.Random(rid)
    return [rng.randrange(FIRST_ID, vocab_size) for _ in range(n)]


def body(spec: RequestSpec, vocab_size: int) -> dict:
    return {
        "rid": spec.rid,
        "input_ids": prompt_ids(spec.rid, spec.prompt_len, vocab_size),
        "sampling_params": {"max_new_tokens": spec.output_len, "ignore_eos": True, "temperature": 0.0,
                            "stream_interval": STREAM_INTERVAL},
        "stream": True,
    }  # fmt: skip


async def _one(session, url: str, spec: RequestSpec, vocab_size: int, t0: float, k: float, timeout_s: float,
               res: RequestResult) -> None:
    import aiohttp

    res.sent_wall_s = time.monotonic()
    try:
        async with session.post(f"{url}/generate", json=body(spec, vocab_size),
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                res.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if not _event(event, res, t0, k):
                        return
    except TimeoutError:
        res.error = f"no answer within {timeout_s:.0f} s (wall)"
    except Exception as err:  # aiohttp client errors and the like: record, never raise out of the run
        res.error = f"{type(err).__name__}: {err}"
    if not res.error and res.tokens_out != spec.output_len:
        res.error = f"{res.tokens_out} tokens out, {spec.output_len} asked"


def _event(event: bytes, res: RequestResult, t0: float, k: float) -> bool:
    """Handle one server-sent event; False when the stream is over."""
    line = event.strip()
    if not line.startswith(b"data:"):
        return True
    data = line[5:].strip()
    if data == b"[DONE]":
        return False
    now = (time.monotonic() - t0) / k
    try:
        msg = json.loads(data)
    except json.JSONDecodeError:
        res.error = f"bad chunk {data[:80]!r}"
        return False
    if "error" in msg:
        res.error = f"server error: {str(msg['error'])[:200]}"
        return False
    if math.isnan(res.first_token_s):
        res.first_token_s = now
    meta = msg.get("meta_info") or {}
    res.tokens_out = int(meta.get("completion_tokens", res.tokens_out))
    if meta.get("finish_reason"):
        res.finish_s = now
    return True


async def _run(url: str, specs: list[RequestSpec], vocab_size: int, clock_scale: float, timeout_s: float,
               t0: float) -> list[RequestResult]:
    import aiohttp

    results = [RequestResult(s.rid, s.arrival_s, s.prompt_len, s.output_len) for s in specs]
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        tasks = []
        for spec, res in zip(specs, results):
            delay = t0 + spec.arrival_s * clock_scale - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(_one(session, url, spec, vocab_size, t0, clock_scale, timeout_s, res)))
        await asyncio.gather(*tasks)
    return results


def run(url: str, specs: list[RequestSpec], vocab_size: int, clock_scale: float = 1.0,
        timeout_s: float = 1800.0) -> tuple[float, list[RequestResult]]:
    """Send `specs` open loop; returns (the run's start, time.monotonic(), and one result per spec)."""
    if not specs:
        raise ValueError("no requests to send")
    t0 = time.monotonic() + 0.2
    return t0, asyncio.run(_run(url, list(specs), vocab_size, clock_scale, timeout_s, t0))

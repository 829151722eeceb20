"""Emulated-GPU mode end to end: a real 1P1D SGLang + Adrenaline stack (emulate_adrenaline.yaml) serving the
tiny stand-in, timed as Llama-2 13B on A100-80GB (docs/emulator.md).

One stack, one burst of 24 requests through an adrenaline proxy with policy `ratio:1` (about half of them
offloaded, so the executor path runs too), all sent at once: every request completes with exactly the
requested tokens, decode's KV pool holds the emulated 60,497 tokens, the emulated GPU's step durations
are the cost model's (decode steps recomputed from the trace), and the requests' TPOT follows the modelled
decode steps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "adrenaline_sgl" / "configs" / "emulate_adrenaline.yaml"


def test_emulated_stack_serves_every_request_on_the_modelled_clock(tmp_path):
    import requests

    from adrenaline_sgl import launch
    from adrenaline_sgl.configs import cluster
    from adrenaline_sgl.emulate import client, pool
    from adrenaline_sgl.emulate.timing import StepModel
    from adrenaline_sgl.emulate.trace import read

    cfg = cluster.load(CONFIG)
    cfg = dataclasses.replace(cfg, run_dir=str(tmp_path),
                              proxy=dataclasses.replace(cfg.proxy, extra_args=("--policy", "ratio:1")))
    rng = np.random.default_rng(0)
    specs = [client.RequestSpec(f"e2e-{i}", 0.0, int(rng.integers(20, 300)), int(rng.integers(8, 120)))
             for i in range(24)]  # fmt: skip
    with launch.start_cluster(cfg) as running:
        decode_load = requests.get(running.spec("decode-0").url + "/adrenaline/load", timeout=10).json()
        assert decode_load["max_total_tokens"] == pool.kv_pool_tokens(cfg.emulate) == 60_497
        _, results = client.run(running.proxy_url, specs, vocab_size=49152, clock_scale=cfg.emulate.clock_scale,
                                timeout_s=300)
        failed = [f"{r.rid}: {r.error}" for r in results if r.error]
        assert not failed, failed
        assert [r.tokens_out for r in results] == [s.output_len for s in specs]
        trace_dir = Path(running.folder) / "emulate"
        decode = [r for f in trace_dir.glob("emulate-decode-*.csv") for r in read(str(f)) if r["kind"] == "decode"]
        prefill = [r for f in trace_dir.glob("emulate-prefill-*.csv") for r in read(str(f))]
    assert sum(r["offloaded"] for r in decode) > 0  # some rows decoded through the executor
    assert sum(r["new_tokens"] for r in prefill if r["kind"] == "prefill") >= sum(s.prompt_len for s in specs)
    model, k = StepModel(cfg.emulate), cfg.emulate.clock_scale
    local = [r for r in decode if r["offloaded"] == 0 and r["batch"] > 0]
    assert local
    for r in local:  # every local decode step: the cost model's time, and the emulated GPU took exactly that
        assert r["model_ms"] == pytest.approx(model.decode(int(r["batch"]), int(r["context_tokens"])).ms, rel=1e-3)
        assert (r["done_s"] - r["start_s"]) * 1e3 == pytest.approx(r["model_ms"] * k, rel=1e-3)
    # TPOT of the requests: the modelled decode step, plus what the scheduler could not hide (bubbles)
    tpot_ms = np.mean([(r.finish_s - r.first_token_s) / (r.tokens_out - 1) * 1e3 for r in results])
    step_ms = np.mean([r["model_ms"] for r in decode if r["batch"] > 0])
    assert step_ms * 0.9 <= tpot_ms <= step_ms * 1.5, (tpot_ms, step_ms)

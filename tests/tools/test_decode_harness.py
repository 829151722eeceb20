"""The decode harness on transformers' Llama: same tokens as transformers itself, and with offload."""

import importlib.util
import json
import time

import pytest
import torch

from adrenaline_sgl.offload.client import ClientConfig, OffloadClient
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.offload.service import ExecutorService
from adrenaline_sgl.offload.transports.base import create_channel
from adrenaline_sgl.offload.wire import RowLayout
from adrenaline_sgl.tools import offload_check as check
from adrenaline_sgl.tools.decode_harness import DecodeHarness
from adrenaline_sgl.tools.harness_models import load_model

NEW_TOKENS = 8


@pytest.fixture(scope="module")
def tiny():
    loaded = load_model("tiny-random")
    return loaded, loaded.prompts(4)


@pytest.fixture(scope="module")
def baseline(tiny):
    loaded, prompts = tiny
    return DecodeHarness(loaded.model).generate(prompts, [False] * len(prompts), NEW_TOKENS)


def _layout(model) -> RowLayout:
    cfg = model.config
    return RowLayout(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, torch.float32)


def _inproc_client(model, num_slots=512) -> OffloadClient:
    cfg = model.config
    pool = KVPool.standalone(cfg.num_hidden_layers, num_slots, cfg.num_key_value_heads, cfg.head_dim)
    channel = create_channel("inproc", service=ExecutorService(AttentionExecutor(pool, "reference")))
    return OffloadClient(channel, _layout(model), cfg.num_hidden_layers)


def test_harness_without_offload_matches_transformers_generate(tiny, baseline):
    loaded, prompts = tiny
    model = load_model("tiny-random").model  # a fresh copy: the harness switched the other's attention
    model.config._attn_implementation = "sdpa"
    for prompt, tokens in zip(prompts, baseline.tokens):
        out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
        assert out[0, len(prompt):].tolist() == tokens


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_inproc_offload_is_token_identical(tiny, baseline, fraction):
    loaded, prompts = tiny
    client = _inproc_client(loaded.model)
    try:
        flags = check.offload_flags(fraction, len(prompts))
        result = DecodeHarness(loaded.model, client).generate(prompts, flags, NEW_TOKENS)
        assert result.tokens == baseline.tokens and not result.failed
        assert len(client.round_trip_ms) == (NEW_TOKENS - 1) * loaded.model.config.num_hidden_layers
        assert client.stats()["requests"] == 0  # every offloaded request was released
    finally:
        client.close()


def test_offload_flags_spread_and_count():
    assert check.offload_flags(0.5, 8) == [True, False] * 4
    assert check.offload_flags(1.0, 3) == [True] * 3 and check.offload_flags(0.0, 3) == [False] * 3
    with pytest.raises(ValueError, match="offload fraction"):
        check.offload_flags(1.5, 3)


needs_mooncake = pytest.mark.skipif(importlib.util.find_spec("mooncake") is None,
                                    reason="mooncake-transfer-engine is not installed")


@needs_mooncake
def test_killed_executor_mid_generation_fails_offloaded_requests_only(tiny, baseline):
    from adrenaline_sgl.offload.process import ExecutorProcess

    loaded, prompts = tiny
    cfg = loaded.model.config
    flags = [True, False, True, False]
    with ExecutorProcess(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, 512,
                         attention="reference") as proc:
        channel = create_channel("mooncake", address=proc.address, layout=_layout(loaded.model), max_rows=4)
        client = OffloadClient(channel, _layout(loaded.model), cfg.num_hidden_layers,
                               ClientConfig(layer_timeout_s=1.0, control_timeout_s=5.0))
        killed_at = []

        def kill_at_step_3(step):
            if step == 3:
                proc.kill()
                killed_at.append(time.perf_counter())

        try:
            result = DecodeHarness(loaded.model, client).generate(prompts, flags, NEW_TOKENS, on_step=kill_at_step_3)
        finally:
            client.close()
    assert time.perf_counter() - killed_at[0] < 10  # seconds, not minutes
    assert set(result.failed) == {"r0", "r2"}
    assert all(proc.address in why for why in result.failed.values())
    for i in (1, 3):  # the local requests decoded to the end, with the same tokens
        assert result.tokens[i] == baseline.tokens[i]
    for i in (0, 2):  # offloaded ones kept what they had before the crash (prefill token + 3 steps)
        assert result.tokens[i] == baseline.tokens[i][:4]


@pytest.mark.parametrize("transport", ["inproc", pytest.param("mooncake", marks=needs_mooncake)])
def test_check_cli_prints_identical_json(transport, capsys):
    argv = ["--transport", transport, "--model", "tiny-random", "--offload-fraction", "0.5", "--prompts", "4",
            "--max-new-tokens", "6", "--layer-timeout-s", "20"]
    assert check.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["identical"] is True and out["offloaded_requests"] == 2 and out["tokens_compared"] == 24
    assert out["round_trips"] == 5 * 2 and 0 < out["round_trip_ms_p50"] <= out["round_trip_ms_p99"]


@pytest.mark.slow
def test_check_cli_on_smollm2_small(capsys):
    """A real model, cut down to stay in the CPU test budget (the full 8 x 32 runs are in docs/perf.md)."""
    argv = ["--transport", "inproc", "--model", "smollm2", "--offload-fraction", "0.5", "--prompts", "2",
            "--max-new-tokens", "4"]
    assert check.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["identical"] is True and out["offloaded_requests"] == 1 and out["tokens_compared"] == 8


@needs_mooncake
def test_check_cli_fault_mode_reports_detection_and_local_tokens(capsys):
    argv = ["--transport", "mooncake", "--model", "tiny-random", "--offload-fraction", "0.5", "--prompts", "4",
            "--max-new-tokens", "6", "--layer-timeout-s", "1", "--kill-executor-at-step", "2"]
    assert check.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fault = out["fault"]
    assert out["identical"] is False and fault["killed"] and fault["all_offloaded_failed"]
    assert fault["local_identical"] and fault["local_tokens"] == 12 and 0 < fault["detect_s"] < 5

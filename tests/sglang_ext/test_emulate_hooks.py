"""The emulated-GPU glue: hook targets exist in SGLang 0.5.23, forwards are timed by the cost model and
queued on the emulated GPU, tokens are deterministic, results wait for the emulated GPU, transfers hold
the link. Real SGLang types where the hooks meet them (ForwardMode, LogitsProcessorOutput,
ModelRunnerOutput, GenerationBatchResult), stand-ins for the rest."""

from __future__ import annotations

import importlib
import time
import types

import pytest
import torch

from adrenaline_sgl.emulate import tokens
from adrenaline_sgl.emulate.clock import EmulatedDone
from adrenaline_sgl.emulate.config import ENV_VAR, EmulateConfig
from adrenaline_sgl.emulate.timing import RemoteRows
from adrenaline_sgl.sglang_ext import emulate_hooks as eh


@pytest.fixture
def emu(monkeypatch, tmp_path):
    cfg = EmulateConfig(gpu="a100-80g", model="llama2-13b", trace_dir=str(tmp_path))
    monkeypatch.setenv(ENV_VAR, cfg.to_json())
    monkeypatch.setattr(eh, "_EMULATOR", None)
    e = eh.current()
    e.vocab_size, e.eos_id = 49152, 2
    return e


def test_every_hook_target_exists_in_sglang(monkeypatch):
    from sglang.srt.plugins.hook_registry import HookType

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert eh.hooks(HookType) == []
    monkeypatch.setenv(ENV_VAR, EmulateConfig().to_json())
    table = eh.hooks(HookType)
    assert len(table) == 6
    for target, _, hook_type in table:
        module, cls, attr = target.rsplit(".", 2)
        assert callable(getattr(getattr(importlib.import_module(module), cls), attr)), target
        assert hook_type is HookType.AROUND


def _forward_batch(mode, seq_lens, extend=None):
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    lens = torch.tensor(seq_lens, dtype=torch.int64)
    return types.SimpleNamespace(forward_mode=getattr(ForwardMode, mode), batch_size=len(seq_lens), seq_lens=lens,
                                 seq_lens_cpu=lens, extend_seq_lens_cpu=extend,
                                 req_pool_indices=torch.arange(len(lens)))


class _Backend:
    def __init__(self, split=None):
        self.calls, self._split = 0, split

    def init_forward_metadata(self, fb):
        self.calls += 1


def test_decode_step_is_the_cost_model_and_builds_attention_metadata(emu):
    runner = types.SimpleNamespace(attn_backend=_Backend())
    step = emu.forward(runner, _forward_batch("DECODE", [100, 200, 300]))
    assert runner.attn_backend.calls == 1  # the backend's per-step work is real
    assert step.kind == "decode" and step.batch == 3 and step.context_tokens == 600
    assert step.model_ms == pytest.approx(emu.model.decode(3, 600).ms)
    assert step.done - step.start == pytest.approx(step.model_ms / 1e3)


def test_offloaded_rows_of_the_adrenaline_split_are_timed_remotely(emu):
    from adrenaline_sgl.offload.decode_state import Group, RowSplit

    split = RowSplit(torch.tensor([0, 2]), (Group("127.0.0.1:31000", torch.tensor([1, 3]), ("room-1", "room-3")),))
    runner = types.SimpleNamespace(attn_backend=_Backend(split))
    step = emu.forward(runner, _forward_batch("DECODE", [100, 200, 300, 400]))
    assert step.offloaded == 2
    assert step.model_ms == pytest.approx(emu.model.decode(2, 400, [RemoteRows(2, 600)]).ms)


def test_prefill_runs_on_the_prefill_share_on_an_adrenaline_instance(emu):
    runner = types.SimpleNamespace(attn_backend=_Backend())
    full = emu.forward(runner, _forward_batch("EXTEND", [161, 40], extend=[161, 40]))
    assert full.model_ms == pytest.approx(emu.model.prefill([161, 40]).ms) and full.new_tokens == 201
    emu.prefill_sm_share = 0.8
    assert emu.forward(runner, _forward_batch("EXTEND", [161], extend=[161])).model_ms == pytest.approx(
        emu.model.prefill([161], 0.8).ms)


def _req(rid, room, prompt, ignore_eos=True, stop_at=None):
    custom = {tokens.OUTPUT_LEN_KEY: stop_at} if stop_at else None
    params = types.SimpleNamespace(ignore_eos=ignore_eos, custom_params=custom)
    return types.SimpleNamespace(rid=rid, bootstrap_room=room, origin_input_ids=list(range(prompt)),
                                 sampling_params=params)


def test_sample_gives_each_request_its_next_token(emu):
    reqs = [_req("a", 11, 5), _req("b", None, 3, ignore_eos=False, stop_at=2)]
    emu.batch = types.SimpleNamespace(reqs=reqs)
    ids = emu.sample(_forward_batch("DECODE", [6, 4]))  # a: output token 2; b: output token 2 = its end
    assert ids.dtype == torch.int64
    assert ids.tolist() == [tokens.token_id(tokens.request_key("a", 11), 2, 49152), 2]
    first = emu.sample(_forward_batch("EXTEND", [5, 3], extend=[5, 3]))  # prefill: output token 1
    assert first.tolist() == [tokens.token_id(tokens.request_key("a", 11), 1, 49152),
                              tokens.token_id(tokens.request_key("b", None), 1, 49152)]


def test_forward_hook_returns_sglangs_output_types(emu):
    from sglang.srt.layers.logits_processor import LogitsProcessorOutput
    from sglang.srt.model_executor.model_runner import ModelRunnerOutput

    runner = types.SimpleNamespace(attn_backend=_Backend(), forward_pass_id=0,
                                   model_config=types.SimpleNamespace(vocab_size=49152, hf_config=None))
    out = eh.forward_hook(lambda *a, **k: pytest.fail("the model must not run"), runner,
                          _forward_batch("DECODE", [10]))
    assert isinstance(out, ModelRunnerOutput) and isinstance(out.logits_output, LogitsProcessorOutput)
    assert runner.forward_pass_id == 1 and emu.step.kind == "decode"


def test_results_are_ready_when_the_emulated_gpu_is_done(emu):
    from sglang.srt.managers.utils import GenerationBatchResult

    result = GenerationBatchResult(next_token_ids=torch.zeros(1, dtype=torch.int64))
    emu.batch, emu.step = None, None
    out = eh.worker_forward_hook(lambda self, batch: (emu._queue("decode", 1, 1, 10, 0, 30.0, time.monotonic()),
                                                      result)[1], None, types.SimpleNamespace(reqs=[]))
    step = getattr(out, eh._EMU_ATTR)
    eh.copy_result_hook(lambda self, r, b: None, None, out, None)
    assert isinstance(out.copy_done, EmulatedDone) and out.copy_done.done_at == step.done
    processed = []
    eh.process_result_hook(lambda self, b, r: processed.append(time.monotonic()), _Scheduler(), None, out)
    assert processed[0] >= step.done  # SGLang saw the result only after the emulated 30 ms


class _Scheduler:
    server_args = types.SimpleNamespace()
    disaggregation_mode = "decode"
    max_total_num_tokens = 60497
    token_to_kv_pool_allocator = types.SimpleNamespace(available_size=lambda: 60000)
    tree_cache = types.SimpleNamespace(evictable_size=lambda: 0)
    waiting_queue = [1, 2]
    running_batch = types.SimpleNamespace(reqs=[1])


def test_trace_row_after_each_step(emu, tmp_path):
    from adrenaline_sgl.emulate.trace import read

    emu.bind_scheduler(_Scheduler())
    step = emu._queue("decode", 1, 1, 10, 0, 1.0, time.monotonic())
    emu.record(_Scheduler(), step)
    emu.trace.close()
    rows = read(emu.trace.path)
    assert rows[0]["kv_used"] == 497 and rows[0]["waiting"] == 2 and rows[0]["model_ms"] == 1.0


def test_kv_transfer_holds_the_link_for_the_emulated_time(emu):
    mgr = types.SimpleNamespace(kv_args=types.SimpleNamespace(page_size=1))
    calls = []
    t0 = time.monotonic()
    eh.send_kv_hook(lambda self, sid, idx, *a: calls.append(len(idx)), mgr, "sid", list(range(4096)))
    waited = time.monotonic() - t0
    assert calls == [4096]
    assert waited >= emu.model.kv_transfer_ms(4096) / 1e3 * 0.95  # 3.2 GB over NVLink: about 11 ms

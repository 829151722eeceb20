"""The `adrenaline` backend around SGLang's real attention backend equals the unwrapped backend.

Real SGLang classes: `MHATokenToKVPool`, `ReqToTokenPool`, `ForwardBatch`, `RadixAttention` and the wrapped
`TorchNativeAttnBackend` (what SGLang serves with on CPU). The offloaded rows go through the real
`OffloadClient` and `inproc` transport to an `AttentionExecutor`. In the wrapped run, the decode pool holds
ZEROS where the offloaded requests' KV would be, so equal outputs prove their attention ran remotely.
"""

from __future__ import annotations

import time
import types

import pytest
import torch

from adrenaline_sgl.offload.client import ClientConfig, OffloadClient
from adrenaline_sgl.offload.errors import OffloadError
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.offload.service import ExecutorService
from adrenaline_sgl.offload.transports.inproc import InprocChannel
from adrenaline_sgl.offload.wire import RowLayout

sgl_pool = pytest.importorskip("sglang.srt.mem_cache.memory_pool")
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend  # noqa: E402
from sglang.srt.layers.radix_attention import RadixAttention  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode  # noqa: E402

from adrenaline_sgl.offload.decode_state import DecodeOffload  # noqa: E402
from adrenaline_sgl.sglang_ext.backend import AdrenalineAttnBackend, sub_batch  # noqa: E402

HQ, HKV, D, LAYERS, SLOTS = 4, 2, 8, 2, 96
PROMPT_LENS = [5, 9, 3, 7]  # tokens already in KV, per request (batch row b uses req_to_token row b + 1)


def torch_native(world, pool):
    return TorchNativeAttnBackend(
        types.SimpleNamespace(device="cpu", req_to_token_pool=world.req_to_token, token_to_kv_pool=pool)
    )


class World:
    """The decode instance's pools and backend, plus an executor holding the offloaded requests' KV."""

    def __init__(self, offloaded: set[int], seed: int = 0, layer_delay_s: float = 0.0, timeout_s: float = 5.0,
                 make_backend=None):  # fmt: skip
        g = torch.Generator().manual_seed(seed)
        self.layers = [RadixAttention(num_heads=HQ, head_dim=D, scaling=D**-0.5, num_kv_heads=HKV, layer_id=i)
                       for i in range(LAYERS)]  # fmt: skip
        self.ref_pool = self._pool()
        self.pool = self._pool()  # the wrapped run's decode pool
        self.req_to_token = sgl_pool.ReqToTokenPool(8, 64, "cpu", False)
        self.next_slot = 1  # slot 0 is SGLang's padding slot
        self.offloaded = offloaded
        executor = AttentionExecutor(KVPool.standalone(LAYERS, SLOTS, HKV, D), attention="reference")
        self.service = ExecutorService(executor)
        if layer_delay_s:
            layer = self.service.layer
            self.service.layer = lambda *a: (time.sleep(layer_delay_s), layer(*a))[1]
        self.channel = InprocChannel(self.service)
        self.client = OffloadClient(self.channel, RowLayout(HQ, HKV, D, torch.float32), LAYERS,
                                    ClientConfig(layer_timeout_s=timeout_s))  # fmt: skip
        self.offload = DecodeOffload(connect=lambda addr: self.client)
        self.lens = list(PROMPT_LENS)
        for b, n in enumerate(PROMPT_LENS):
            slots = self._alloc(b, n)
            k = torch.randn(LAYERS, n, HKV, D, generator=g)
            v = torch.randn(LAYERS, n, HKV, D, generator=g)
            for i in range(LAYERS):
                self.ref_pool.k_buffer[i][slots] = k[i]
                self.ref_pool.v_buffer[i][slots] = v[i]
                if b not in offloaded:  # an offloaded request's prompt KV never reaches decode
                    self.pool.k_buffer[i][slots] = k[i]
                    self.pool.v_buffer[i][slots] = v[i]
            if b in offloaded:
                self.client.adopt_copy(f"r{b}", k, v)
                self.offload.mark(b + 1, f"r{b}", "inproc")
        make_backend = make_backend or torch_native
        self.reference = make_backend(self, self.ref_pool)
        self.wrapped = AdrenalineAttnBackend(make_backend(self, self.pool), self.offload)

    @staticmethod
    def _pool():
        return sgl_pool.MHATokenToKVPool(SLOTS, page_size=1, dtype=torch.float32, head_num=HKV, head_dim=D,
                                         layer_num=LAYERS, device="cpu", enable_memory_saver=False)  # fmt: skip

    def _alloc(self, b: int, n: int) -> torch.Tensor:
        slots = torch.arange(self.next_slot, self.next_slot + n)
        start = int((self.req_to_token.req_to_token[b + 1] > 0).sum())
        self.req_to_token.req_to_token[b + 1, start : start + n] = slots.to(torch.int32)
        self.next_slot += n
        return slots

    def step(self, g: torch.Generator):
        """One decode step over all layers for both backends; returns (out, ref_out, new slots)."""
        new_slots = torch.cat([self._alloc(b, 1) for b in range(len(self.lens))])
        self.lens = [n + 1 for n in self.lens]
        fb = ForwardBatch(forward_mode=ForwardMode.DECODE, batch_size=len(self.lens),
                          input_ids=torch.zeros(len(self.lens), dtype=torch.int64),
                          req_pool_indices=torch.arange(1, len(self.lens) + 1), seq_lens=torch.tensor(self.lens),
                          out_cache_loc=new_slots, seq_lens_sum=sum(self.lens),
                          seq_lens_cpu=torch.tensor(self.lens))  # fmt: skip
        self.reference.init_forward_metadata(fb)
        self.wrapped.init_forward_metadata(fb)
        outs, refs, news = [], [], []
        for layer in self.layers:
            q = torch.randn(len(self.lens), HQ * D, generator=g)  # [B, Hq * D]
            k = torch.randn(len(self.lens), HKV, D, generator=g)  # [B, Hkv, D]
            v = torch.randn(len(self.lens), HKV, D, generator=g)
            refs.append(self.reference.forward(q, k, v, layer, fb))
            outs.append(self.wrapped.forward(q, k, v, layer, fb))
            news.append(k)
        return torch.stack(outs), torch.stack(refs), new_slots, torch.stack(news)

    def close(self):
        self.channel.close()


@pytest.mark.parametrize("offloaded", [{1, 3}, {0, 1, 2, 3}, set()], ids=["some", "all", "none"])
def test_wrapper_equals_unwrapped_backend(offloaded):
    world = World(offloaded)
    g = torch.Generator().manual_seed(1)
    try:
        for _ in range(2):  # the second step attends over the first step's k, v on both sides
            out, ref, new_slots, new_k = world.step(g)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
            for b in range(len(PROMPT_LENS)):
                written = world.pool.k_buffer[0][new_slots[b]]
                if b in offloaded:  # the new token's k, v of an offloaded row are not written locally
                    assert torch.count_nonzero(written) == 0
                else:
                    torch.testing.assert_close(written, new_k[0, b])
        if offloaded:
            assert len(world.client.round_trip_ms) == 2 * LAYERS
            assert world.service.executor.stats().tokens_held == sum(PROMPT_LENS[b] + 2 for b in offloaded)
    finally:
        world.close()


@pytest.fixture(scope="module")
def triton_env(tmp_path_factory):
    """SGLang's TritonAttnBackend on CPU (interpreter): a runtime context from a weightless tiny Llama config."""
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend
    from sglang.srt.mem_cache.kv_index_translator import KVIndexTranslator
    from sglang.srt.runtime_context import create_context, use_context
    from sglang.srt.server_args import prepare_server_args
    from transformers import LlamaConfig

    model_dir = tmp_path_factory.mktemp("tiny_llama")
    LlamaConfig(hidden_size=HQ * D, intermediate_size=64, num_attention_heads=HQ, num_key_value_heads=HKV,
                num_hidden_layers=LAYERS, vocab_size=128, max_position_embeddings=64,
                architectures=["LlamaForCausalLM"]).save_pretrained(model_dir)  # fmt: skip
    server_args = prepare_server_args(["--model-path", str(model_dir), "--device", "cpu",
                                       "--attention-backend", "triton"])  # fmt: skip
    ctx = create_context(server_args, role="scheduler")
    with use_context(ctx):
        model_config = ModelConfig.from_server_args(server_args)

    def make(world, pool):
        translator = KVIndexTranslator(req_to_token=world.req_to_token.req_to_token, token_to_kv_pool_allocator=None,
                                       token_to_kv_pool=pool, page_size=1, device="cpu")  # fmt: skip
        runner = types.SimpleNamespace(
            device="cpu", req_to_token_pool=world.req_to_token, token_to_kv_pool=pool, sliding_window_size=None,
            token_to_kv_pool_allocator=None, page_size=1, kv_index_translator=translator, model_config=model_config,
            decode_num_tokens_per_req=lambda: 1, is_draft_worker=False, gpu_id=0, kv_cache_dtype=torch.float32,
        )
        return TritonAttnBackend(runner)

    return lambda: use_context(ctx), make


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-interpreter variant; GPU runs use real devices")
def test_wrapper_around_triton_equals_triton_in_the_interpreter(triton_env):
    context, make = triton_env
    with context():
        world = World({1, 3}, make_backend=make)
        try:
            out, ref, new_slots, _ = world.step(torch.Generator().manual_seed(1))
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
            plain = World({1, 3})  # same data through torch_native: the interpreter run is real attention
            try:
                torch.testing.assert_close(ref, plain.step(torch.Generator().manual_seed(1))[1], atol=1e-4, rtol=1e-4)
            finally:
                plain.close()
            for b in (1, 3):
                assert torch.count_nonzero(world.pool.k_buffer[0][new_slots[b]]) == 0
        finally:
            world.close()


def test_sub_batch_keeps_only_local_rows():
    fb = ForwardBatch(forward_mode=ForwardMode.DECODE, batch_size=3, input_ids=torch.tensor([7, 8, 9]),
                      req_pool_indices=torch.tensor([4, 5, 6]), seq_lens=torch.tensor([2, 3, 4]),
                      out_cache_loc=torch.tensor([10, 11, 12]), seq_lens_sum=9)  # fmt: skip
    sub = sub_batch(fb, torch.tensor([0, 2]))
    assert sub.batch_size == 2 and sub.seq_lens_sum == 6
    assert sub.req_pool_indices.tolist() == [4, 6] and sub.out_cache_loc.tolist() == [10, 12]
    assert fb.batch_size == 3 and fb.req_pool_indices.tolist() == [4, 5, 6]  # the original is untouched


def test_silent_executor_takes_out_only_its_rows_instead_of_hanging():
    world = World({1}, layer_delay_s=1.0, timeout_s=0.2)
    try:
        t0 = time.monotonic()
        out, ref, _, _ = world.step(torch.Generator().manual_seed(1))
        assert time.monotonic() - t0 < 1.5  # one layer timeout, then that executor is skipped
        torch.testing.assert_close(out[:, [0, 2, 3]], ref[:, [0, 2, 3]])  # the other rows decode on
        assert torch.count_nonzero(out[:, 1]) == 0  # the failed row gets zeros (its request is aborted)
        failed = world.offload.failed()
        assert list(failed) == [2] and "no reply for layer 0 within 0.2 s" in failed[2]  # row of batch pos 1
        assert world.offload._clients == {}  # dropped: the next request to that executor reconnects
        world.service.layer = lambda *a: (_ for _ in ()).throw(AssertionError("called a failed executor"))
        out2, ref2, _, _ = world.step(torch.Generator().manual_seed(2))  # next step: no remote call at all
        torch.testing.assert_close(out2[:, [0, 2, 3]], ref2[:, [0, 2, 3]])
        # the aborted request's release waits until the executor is reached again (never blocks the step)
        assert world.offload.unmark(2) is not None and "r1" in world.service.executor.rids
        world.offload.client("inproc")  # the next request to that executor reconnects ...
        assert "r1" not in world.service.executor.rids  # ... and the pending release goes first
    finally:
        world.close()


def test_unreachable_executor_at_connect_takes_out_only_its_rows():
    world = World({1, 3})
    try:
        def refuse(addr):
            raise OffloadError(f"executor at {addr}: connection refused")

        world.offload._clients.clear()  # the next step connects afresh ...
        world.offload._connect = refuse  # ... and the executor is gone
        out, ref, _, _ = world.step(torch.Generator().manual_seed(1))
        torch.testing.assert_close(out[:, [0, 2]], ref[:, [0, 2]])
        assert torch.count_nonzero(out[:, [1, 3]]) == 0
        assert sorted(world.offload.failed()) == [2, 4] and "connection refused" in world.offload.failed()[2]
    finally:
        world.close()


def test_failed_requests_are_aborted_by_the_scheduler_hook():
    from sglang.srt.managers.schedule_batch import FINISH_ABORT

    from adrenaline_sgl.offload import decode_state
    from adrenaline_sgl.sglang_ext import decode_hooks, flags

    offload = DecodeOffload(connect=lambda addr: None)
    offload.mark(5, "room-5", "10.0.0.1:31000")
    offload.fail([5], "adrenaline executor 10.0.0.1:31000 failed: gone")
    reqs = [types.SimpleNamespace(rid=rid, kv=types.SimpleNamespace(req_pool_idx=row), to_finish=None,
                                  finished=lambda: False) for rid, row in (("a", 4), ("b", 5))]  # fmt: skip
    server_args = types.SimpleNamespace(_adrenaline=flags.AdrenalineArgs(role="decode"))
    scheduler = types.SimpleNamespace(running_batch=types.SimpleNamespace(reqs=reqs), server_args=server_args)
    decode_state.install(offload)
    try:
        assert decode_hooks.run_batch_hook(lambda self: "result", scheduler) == "result"
    finally:
        decode_state.install(None)
    assert reqs[0].to_finish is None
    assert isinstance(reqs[1].to_finish, FINISH_ABORT) and "10.0.0.1:31000 failed: gone" in str(
        reqs[1].to_finish.to_json())
    assert offload.unmark(5) is not None and offload.failed() == {}  # released without calling the dead executor


def test_registry_factory_wraps_the_configured_backend():
    from adrenaline_sgl.offload import decode_state
    from adrenaline_sgl.sglang_ext import flags
    from adrenaline_sgl.sglang_ext.backend import build_backend

    world = World(set())
    cfg = types.SimpleNamespace(num_attention_heads=HQ, get_num_kv_heads=lambda tp: HKV, head_dim=D,
                                num_hidden_layers=LAYERS)  # fmt: skip
    runner = types.SimpleNamespace(device="cpu", req_to_token_pool=world.req_to_token, token_to_kv_pool=world.pool,
                                   model_config=cfg, kv_cache_dtype=torch.float32)  # fmt: skip
    try:
        args = flags.AdrenalineArgs(role="decode", transport="inproc", inner_attention_backend="torch_native")
        backend = build_backend(runner, args)
        assert isinstance(backend.inner, TorchNativeAttnBackend)
        assert decode_state.current() is backend.offload
        with pytest.raises(OffloadError, match="inproc cannot reach executor '10.0.0.1:31000'"):
            backend.offload.client("10.0.0.1:31000")
        with pytest.raises(ValueError, match="inner_attention_backend='nope'"):
            build_backend(runner, flags.AdrenalineArgs(role="decode", inner_attention_backend="nope"))
    finally:
        decode_state.install(None)
        world.close()


def test_connect_to_an_executor_is_bounded_like_a_layer(monkeypatch):
    """A connect blocks decode's scheduler: its timeout follows --adrenaline-remote-timeout-s (>= 5 s), not
    the transport's 30 s default (the CPU e2e executor kill saw a 30 s stall of the whole batch)."""
    from adrenaline_sgl.offload.transports import base
    from adrenaline_sgl.sglang_ext import backend, flags

    seen = {}

    def fake_channel(transport, **kwargs):
        seen.update(kwargs, transport=transport)
        raise OffloadError("executor at x: connect: no reply")

    monkeypatch.setattr(base, "create_channel", fake_channel)
    cfg = types.SimpleNamespace(num_attention_heads=4, get_num_kv_heads=lambda tp: 2, head_dim=8,
                                num_hidden_layers=2)  # fmt: skip
    runner = types.SimpleNamespace(model_config=cfg, kv_cache_dtype=torch.float32,
                                   req_to_token_pool=types.SimpleNamespace(size=1024))  # fmt: skip
    for remote_s, want_s in ((2.0, 5.0), (12.0, 12.0)):
        connect = backend.client_factory(runner, flags.AdrenalineArgs(role="decode", remote_timeout_s=remote_s))
        with pytest.raises(OffloadError, match="no reply"):
            connect("127.0.0.1:1")
        assert seen["transport"] == "mooncake" and seen["connect_timeout_s"] == want_s
        assert seen["max_rows"] == 1024  # every request slot of the instance may be offloaded in one step
    runner.req_to_token_pool.size = 1 << 20  # more slots than an executor sizes buffers for: capped
    with pytest.raises(OffloadError):
        backend.client_factory(runner, flags.AdrenalineArgs(role="decode"))("127.0.0.1:1")
    assert seen["max_rows"] == 65536

"""Prefill hooks on real SGLang classes: the inflight queue keeps an offloaded request's KV, and it is
released at finish (the executor's release) and at abort.

Real: `SchedulerDisaggregationPrefillMixin.process_disagg_prefill_inflight_queue`, `release_kv_cache`,
`Req`, `SamplingParams`, `ReqToTokenPool`, `MHATokenToKVPool`, `TokenToKVPoolAllocator`, `RadixCache`,
`AbortReq`, wrapped exactly as `HookRegistry` wraps (AROUND). Stand-ins: the KV sender (reports Success),
the output streamer, and the single-rank poll all-reduce (no torch.distributed here).
"""

from __future__ import annotations

import types
from array import array

import pytest
import torch
from sglang.srt.disaggregation import prefill as sgl_prefill
from sglang.srt.disaggregation import utils as sgl_disagg_utils
from sglang.srt.disaggregation.base import KVPoll
from sglang.srt.managers.io_struct import AbortReq
from sglang.srt.managers.schedule_batch import FINISH_LENGTH, Req
from sglang.srt.mem_cache import common as sgl_common
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
from sglang.srt.mem_cache.radix_cache import RadixCache
from sglang.srt.plugins.hook_registry import HookType, _wrap_fn

from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.sglang_ext import flags, prefill_hooks

SLOTS, LAYERS, HKV, D = 64, 2, 2, 8


@pytest.fixture(scope="module")
def sgl_context(tmp_path_factory, tiny_llama_context):
    """A published-like runtime context (prefill mode) from a weightless tiny Llama config."""
    return tiny_llama_context(tmp_path_factory, "prefill", HKV, LAYERS)


@pytest.fixture
def hooked(monkeypatch):
    """Install the prefill hooks the way HookRegistry.apply_hooks does (AROUND wrappers), reversibly."""
    mixin = sgl_prefill.SchedulerDisaggregationPrefillMixin
    for cls, name, hook in ((mixin, "process_disagg_prefill_inflight_queue", prefill_hooks.inflight_hook),  # fmt: skip
                            (mixin, "handle_inflight_transfer_failure", prefill_hooks.transfer_failure_hook)):
        monkeypatch.setattr(cls, name, _wrap_fn(getattr(cls, name), hook, HookType.AROUND))
    wrapped_release = _wrap_fn(sgl_common.release_kv_cache, prefill_hooks.release_kv_hook, HookType.AROUND)
    monkeypatch.setattr(sgl_common, "release_kv_cache", wrapped_release)
    monkeypatch.setattr(sgl_prefill, "release_kv_cache", wrapped_release)  # the stale binding apply_hooks fixes
    monkeypatch.setattr(sgl_disagg_utils, "all_reduce_flags", lambda flags, group, op: flags)  # one rank


class Sender:
    def __init__(self, state=KVPoll.Success):
        self.state = state

    def poll(self):
        return self.state

    def clear(self):
        pass

    def failure_exception(self):
        raise RuntimeError("transfer failed (stand-in)")


class FakePrefillScheduler(sgl_prefill.SchedulerDisaggregationPrefillMixin):
    """The attributes `process_disagg_prefill_inflight_queue` reads; the method itself is SGLang's."""

    def __init__(self, role: str):
        self.server_args = types.SimpleNamespace(_adrenaline=flags.AdrenalineArgs(role=role))
        kv = MHATokenToKVPool(SLOTS, page_size=1, dtype=torch.float32, head_num=HKV, head_dim=D, layer_num=LAYERS,
                              device="cpu", enable_memory_saver=False)  # fmt: skip
        self.token_to_kv_pool_allocator = TokenToKVPoolAllocator(SLOTS, torch.float32, "cpu", kv, need_sort=False)
        self.req_to_token_pool = ReqToTokenPool(8, 64, "cpu", False)
        self.tree_cache = RadixCache(CacheInitParams(disable=False, req_to_token_pool=self.req_to_token_pool,
                                                     token_to_kv_pool_allocator=self.token_to_kv_pool_allocator,
                                                     page_size=1))  # fmt: skip
        self.disagg_prefill_inflight_queue: list[Req] = []
        self.attn_cp_cpu_group = self.attn_tp_cpu_group = None
        self.streamed: list[str] = []
        self.output_streamer = types.SimpleNamespace(stream_output=lambda reqs, *a: self.streamed.extend(
            r.rid for r in reqs))  # fmt: skip
        self.req_to_metadata_buffer_idx_allocator = None
        self.metrics_reporter = types.SimpleNamespace(enable_metrics=False)
        self.batch_result_processor = None
        self.scheduler_stage_metrics = None  # SGLang: no stage recorder configured
        self.waiting_queue, self.chunked_req, self.mm_receiver = [], None, None

    def prefilled(self, rid: str, prompt_len: int, offload: bool | None, sender=None, room: int | None = None) -> Req:
        """A request as the prefill forward leaves it: row + slots allocated, first token out, in flight."""
        from sglang.srt.sampling.sampling_params import SamplingParams

        custom = None if offload is None else {"adrenaline_offload": offload}
        req = Req(rid, "", array("q", range(1, prompt_len + 1)),
                  SamplingParams(max_new_tokens=8, custom_params=custom),
                  bootstrap_host="2.2.2.2", bootstrap_room=room)  # fmt: skip
        self.req_to_token_pool.alloc([req])
        slots = self.token_to_kv_pool_allocator.alloc(prompt_len)
        self.req_to_token_pool.write((req.kv.req_pool_idx, slice(0, prompt_len)), slots)
        req.kv.kv_allocated_len = req.kv.kv_committed_len = prompt_len
        req.output_ids.append(42)
        req.disagg_kv_sender = sender or Sender()
        self.disagg_prefill_inflight_queue.append(req)
        return req

    def free_slots(self) -> int:
        return self.token_to_kv_pool_allocator.available_size()


def test_offloaded_request_keeps_kv_until_the_executor_releases_it(sgl_context, hooked):
    with sgl_context():
        s = FakePrefillScheduler("prefill")
        free0, rows0 = s.free_slots(), s.req_to_token_pool.available_size()
        off = s.prefilled("off", 6, offload=True)
        s.prefilled("plain", 5, offload=False)
        slots = s.req_to_token_pool.req_to_token[off.kv.req_pool_idx, :6].clone()
        done = s.process_disagg_prefill_inflight_queue()
        assert [r.rid for r in done] == ["off", "plain"] and s.streamed == ["off", "plain"]  # first token out
        assert isinstance(off.finished_reason, FINISH_LENGTH)
        store = getattr(s, prefill_hooks.STORE_ATTR)
        assert "off" in store and "plain" not in store
        assert s.free_slots() == free0 - 6  # plain's 5 slots are back (into the radix tree or free)
        assert off.kv.holds_kv and s.req_to_token_pool.available_size() == rows0 - 1
        assert store.num_tokens == 6 and store.num_bytes == 6 * 2 * LAYERS * HKV * D * 4
        assert torch.equal(store._kept["off"].slots, slots.to(torch.int64))
        # SGLang's idle check (available + evictable + ... + session_held == total) sees the kept KV as held
        observer = types.SimpleNamespace(token_to_kv_pool_allocator=s.token_to_kv_pool_allocator)
        held = prefill_hooks.held_tokens_hook(lambda self: 0, observer)
        assert s.free_slots() + s.tree_cache.evictable_size() + held == free0 and held == 6
        assert prefill_hooks.held_reqs_hook(lambda self: 0, observer) == 1
        # finish: the decode side tells the executor release(rid); the scheduler frees on its next pass
        store.request_release("off")
        assert s.free_slots() == free0 - 6  # not from the caller's thread
        s.process_disagg_prefill_inflight_queue()
        assert "off" not in store and not off.kv.holds_kv
        assert s.req_to_token_pool.available_size() == rows0
        assert s.free_slots() + s.tree_cache.evictable_size() == free0  # every slot is free or evictable


def test_abort_releases_kept_kv(sgl_context, hooked, monkeypatch):
    from sglang.srt.managers.scheduler import Scheduler

    with sgl_context():
        s = FakePrefillScheduler("prefill")
        free0 = s.free_slots()
        s.prefilled("abc-1", 4, offload=True, room=99)  # kept under the room, which decode shares
        s.process_disagg_prefill_inflight_queue()
        store = getattr(s, prefill_hooks.STORE_ATTR)
        assert "room-99" in store and "abc-1" not in store and s.free_slots() == free0 - 4
        # SGLang's abort_request on a finished-on-prefill request touches no queue; the hook frees the KV
        stock_abort = lambda self, recv_req: None  # noqa: E731 (the queues here are empty anyway)
        abort = _wrap_fn(stock_abort, prefill_hooks.abort_hook, HookType.AROUND)
        abort(s, AbortReq(rid="abc"))  # SGLang's rid prefix on this instance
        assert "room-99" not in store and s.free_slots() == free0
        assert Scheduler.abort_request  # the real target exists (the loader test checks it is patched)


def test_failed_transfer_releases_as_stock_sglang(sgl_context, hooked):
    with sgl_context():
        s = FakePrefillScheduler("prefill")
        s._release_aborted_request = lambda req: None
        free0 = s.free_slots()
        s.prefilled("f", 4, offload=True, sender=Sender(KVPoll.Failed))
        s.process_disagg_prefill_inflight_queue()
        assert getattr(s, prefill_hooks.STORE_ATTR).num_reqs == 0
        assert s.free_slots() + s.tree_cache.evictable_size() == free0


def test_executor_adopts_the_kept_slots_in_place(sgl_context, hooked):
    with sgl_context():
        s = FakePrefillScheduler("prefill")
        pool = s.token_to_kv_pool_allocator.get_kvcache()
        shared = KVPool(pool.k_buffer, pool.v_buffer, s.token_to_kv_pool_allocator)  # same tensors, no copy
        store = prefill_hooks.kept_store(s)
        store.executor = AttentionExecutor(shared, attention="reference")
        free0 = s.free_slots()
        off = s.prefilled("off", 5, offload=True)
        row_slots = s.req_to_token_pool.req_to_token[off.kv.req_pool_idx, :5].to(torch.int64).clone()
        s.process_disagg_prefill_inflight_queue()
        assert store.executor.seq_len("off") == 5
        assert torch.equal(store.executor._requests["off"].slots[:5], row_slots)
        assert shared.k_buffers[0].data_ptr() == pool.k_buffer[0].data_ptr()
        store.request_release("off")
        s.process_disagg_prefill_inflight_queue()
        assert store.executor.rids == [] and s.free_slots() + s.tree_cache.evictable_size() == free0


def test_stock_role_changes_nothing(sgl_context, hooked):
    with sgl_context():
        s = FakePrefillScheduler("none")
        free0 = s.free_slots()
        s.prefilled("x", 4, offload=True)
        s.process_disagg_prefill_inflight_queue()
        assert getattr(s, prefill_hooks.STORE_ATTR, None) is None
        assert s.free_slots() + s.tree_cache.evictable_size() == free0


def test_hosted_executor_attends_over_the_kept_kv_and_decode_release_frees_it(sgl_context, hooked):
    """The whole prefill side: keep -> executor adopts in place -> decode steps over a transport -> decode's
    release(rid) arrives on the transport thread -> freed on the scheduler's next pass."""
    from adrenaline_sgl.offload.client import OffloadClient
    from adrenaline_sgl.offload.transports.inproc import InprocChannel
    from adrenaline_sgl.offload.wire import RowLayout
    from adrenaline_sgl.sglang_ext.prefill_executor import build_prefill_executor

    hq = 4
    with sgl_context():
        s = FakePrefillScheduler("prefill")
        free0 = s.free_slots()
        kept, service = build_prefill_executor(s.token_to_kv_pool_allocator, reserve_tokens=8, attention="reference")
        setattr(s, prefill_hooks.STORE_ATTR, kept)
        assert s.free_slots() == free0 - 8  # the executor's reserve counts as used by SGLang
        observer = types.SimpleNamespace(token_to_kv_pool_allocator=s.token_to_kv_pool_allocator)
        assert prefill_hooks.held_tokens_hook(lambda self: 0, observer) == 8  # ... and as held at idle
        off = s.prefilled("off", 5, offload=True)
        pool = s.token_to_kv_pool_allocator.get_kvcache()
        slots = s.req_to_token_pool.req_to_token[off.kv.req_pool_idx, :5].long()
        g = torch.Generator().manual_seed(0)
        for layer in range(LAYERS):  # what the prefill forward wrote
            pool.k_buffer[layer][slots] = torch.randn(5, HKV, D, generator=g)
            pool.v_buffer[layer][slots] = torch.randn(5, HKV, D, generator=g)
        s.process_disagg_prefill_inflight_queue()
        # its full decode length (max_new_tokens 8 - the first token + 2 slack) is credited: 1 more than the
        # reserve, taken from the pool (issue 18 defect 7: a request never runs out of executor slots mid-decode)
        assert kept.credited_tokens == 9 and kept.capacity_tokens == 9 and s.free_slots() == free0 - 9 - 5
        channel = InprocChannel(service)
        try:
            client = OffloadClient(channel, RowLayout(hq, HKV, D, torch.float32), LAYERS)
            client.begin_step(["off"])
            for layer in range(LAYERS):
                q, k, v = torch.randn(1, hq, D, generator=g), torch.randn(1, HKV, D, generator=g), \
                    torch.randn(1, HKV, D, generator=g)  # fmt: skip
                client.submit(layer, q, k, v)
                o, lse = client.wait()
                keys = torch.cat([pool.k_buffer[layer][slots], k]).repeat_interleave(hq // HKV, dim=1)  # [6, Hq, D]
                vals = torch.cat([pool.v_buffer[layer][slots], v]).repeat_interleave(hq // HKV, dim=1)
                scores = torch.einsum("hd,thd->ht", q[0], keys) * D**-0.5  # [Hq, 6]
                torch.testing.assert_close(o[0], torch.einsum("ht,thd->hd", scores.softmax(-1), vals))
                torch.testing.assert_close(lse[0], torch.logsumexp(scores, -1))
            assert s.free_slots() == free0 - 9 - 5  # the new token went into the executor's slots
            client.release("off")  # decode finished: arrives on the transport's thread
            assert "off" in kept  # nothing freed off the scheduler thread
            s.process_disagg_prefill_inflight_queue()  # the scheduler's next pass
            assert "off" not in kept and service.executor.rids == []
            assert service.executor.pool.allocator.available_size() == 8 and kept.capacity_tokens == 8  # grown back
            assert s.free_slots() + s.tree_cache.evictable_size() == free0 - 8
        finally:
            channel.close()


def test_prefill_init_serves_the_executor_over_mooncake(sgl_context, hooked):
    """`init_disaggregation` on a prefill instance starts the executor server; a decode client reaches it."""
    pytest.importorskip("mooncake.engine")
    from adrenaline_sgl.offload.client import OffloadClient
    from adrenaline_sgl.offload.transports.base import create_channel
    from adrenaline_sgl.offload.wire import RowLayout

    with sgl_context():
        s = FakePrefillScheduler("prefill")
        port = _free_port()
        s.server_args._adrenaline = flags.AdrenalineArgs(role="prefill", transport="mooncake", executor_port=port,
                                                         executor_max_tokens=8)  # fmt: skip
        prefill_hooks.init_disaggregation_hook(lambda self: None, s)
        hosted = getattr(s, prefill_hooks.SERVER_ATTR)
        try:
            assert hosted.address == f"127.0.0.1:{port}"
            import asyncio

            from adrenaline_sgl.sglang_ext.load_endpoint import executor_stats

            stats = asyncio.run(executor_stats("127.0.0.1", port, timeout_s=5.0))  # what /adrenaline/load asks
            assert stats is not None and stats["capacity_slots"] == SLOTS + 1 and stats["requests"] == 0
            layout = RowLayout(4, HKV, D, torch.float32)
            client = OffloadClient(create_channel("mooncake", address=hosted.address, layout=layout), layout, LAYERS)
            try:
                assert client.stats()["capacity_slots"] == SLOTS + 1  # SGLang's pool, slot 0 included
                client.release("never-adopted")  # goes to the scheduler's queue, not an error on the wire
                assert getattr(s, prefill_hooks.STORE_ATTR)._to_release == ["never-adopted"]
            finally:
                client.close()
        finally:
            hosted.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RecordingSender(Sender):
    """Counts pages like SGLang's CommonKVSender: a send is the last chunk when curr_idx reaches num_kv_indices."""

    def __init__(self, num_kv_indices: int = 5):
        super().__init__()
        self.sent: list[tuple[list[int], int | None, bool]] = []
        self.curr_idx, self.num_kv_indices = 0, num_kv_indices

    def should_send_kv_chunk(self, num_pages, is_last):
        return True

    def get_max_transfer_tokens(self):
        return None

    def send(self, kv_indices, state_indices=None, num_kv_tokens=None, indices_event=None):
        self.curr_idx += len(kv_indices)
        self.sent.append((list(kv_indices), num_kv_tokens, self.curr_idx == self.num_kv_indices))


@pytest.mark.parametrize("offload", [True, False])
def test_offloaded_request_sends_no_kv_pages(sgl_context, hooked, monkeypatch, offload):
    mixin = sgl_prefill.SchedulerDisaggregationPrefillMixin
    monkeypatch.setattr(mixin, "_send_kv_chunk", _wrap_fn(mixin._send_kv_chunk, prefill_hooks.send_kv_chunk_hook,
                                                          HookType.AROUND))  # fmt: skip
    with sgl_context():
        s = FakePrefillScheduler("prefill")
        prefill_hooks.kept_store(s)
        s.enable_staging = False
        s.disagg_prefill_pending_chunk_rids = set()
        s.disagg_metadata_buffers = types.SimpleNamespace(set_buf=lambda req: None)
        sender = RecordingSender()
        req = s.prefilled("r", 5, offload=offload, sender=sender)
        s.disagg_prefill_bootstrap_queue = types.SimpleNamespace(
            kv_manager=types.SimpleNamespace(kv_args=types.SimpleNamespace(state_types=[]))  # plain MHA: no state
        )
        req.start_send_idx, req.extend_end = 0, 3
        s._send_kv_chunk(req, last_chunk=False)  # a chunked prefill's first chunk
        req.extend_end = 5
        s._send_kv_chunk(req, last_chunk=True)
        if offload:  # one send, no pages, and the sender sees it as its last chunk (aux = first token goes)
            assert sender.sent == [([], 0, True)]
        else:  # stock: the prompt's pages in two chunks, the second is the last
            assert [(len(p), n, last) for p, n, last in sender.sent] == [(3, 3, False), (2, 2, True)]
        assert "send" not in vars(sender)  # the sender's own method is back


def test_begin_step_waits_briefly_for_the_scheduler_to_adopt(sgl_context, hooked):
    import threading

    from adrenaline_sgl.offload.errors import UnknownRequestError
    from adrenaline_sgl.sglang_ext import prefill_executor

    with sgl_context():
        s = FakePrefillScheduler("prefill")
        kept, service = prefill_executor.build_prefill_executor(s.token_to_kv_pool_allocator, reserve_tokens=4,
                                                                attention="reference")  # fmt: skip
        setattr(s, prefill_hooks.STORE_ATTR, kept)
        s.prefilled("late", 3, offload=True)
        timer = threading.Timer(0.2, s.process_disagg_prefill_inflight_queue)  # the scheduler adopts 0.2 s later
        timer.start()
        step_id, _ = service.control("begin_step", {"rids": ["late"]}, {})
        timer.join()
        assert service.executor.seq_len("late") == 4 and step_id == 0
        prefill_executor.ADOPT_WAIT_S, saved = 0.05, prefill_executor.ADOPT_WAIT_S
        try:
            with pytest.raises(UnknownRequestError, match="never"):
                service.control("begin_step", {"rids": ["never"]}, {})
        finally:
            prefill_executor.ADOPT_WAIT_S = saved


def test_executor_sm_share_reaches_the_partitioner_and_the_kernel_plan(sgl_context, monkeypatch):
    """--adrenaline-executor-sm-share -> the colocation partitioner -> the executor's kernel num_sms."""
    from adrenaline_sgl import colocation
    from adrenaline_sgl.colocation.fake import FakePartitioner
    from adrenaline_sgl.sglang_ext import prefill_executor

    opened = []

    def fake_executor_partitioner(sm_share, device):
        opened.append((sm_share, device))
        return FakePartitioner(device).open(sm_share)  # H100-shaped: 132 SMs, Hopper granularity of 8

    monkeypatch.setattr(colocation, "executor_partitioner", fake_executor_partitioner)
    args = types.SimpleNamespace(transport="inproc", executor_sm_share=0.25, executor_max_tokens=8)
    with sgl_context():
        kept, hosted = prefill_executor.host_executor(FakePrefillScheduler("prefill"), args)
    assert hosted is None  # inproc: nothing listens
    assert opened == [(0.25, "cpu")]
    assert kept.executor.num_sms == 32  # 0.25 x 132 = 33 SMs, rounded to Hopper's multiple of 8


def test_executor_partition_on_cpu_is_unpartitioned():
    from adrenaline_sgl.sglang_ext.prefill_executor import executor_partition

    part = executor_partition(types.SimpleNamespace(executor_sm_share=0.5), torch.device("cpu"))
    assert (part.name, part.stream, part.num_sms) == ("none", None, None)

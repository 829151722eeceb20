"""Issue 18, defects 1-3: the prefill side must never let an executor error escape into SGLang's scheduler
loop, and must free every kept request's KV whatever the order of events.

Real: `SchedulerDisaggregationPrefillMixin.process_disagg_prefill_inflight_queue`, `release_kv_cache`, `Req`,
`SamplingParams`, `ReqToTokenPool`, `MHATokenToKVPool`, `TokenToKVPoolAllocator`, `RadixCache`, the executor
over SGLang's pool (`build_prefill_executor`, its reserve), wrapped exactly as `HookRegistry` wraps (AROUND).
Stand-ins: the KV sender (reports Success), the output streamer, the single-rank poll all-reduce.

Each test ends with the accounting invariant of SGLang's own idle check: once every request is released,
every slot is free or evictable again, except the executor's reserve (held by design).
"""

from __future__ import annotations

import types
from array import array

import pytest
import torch
from sglang.srt.disaggregation import prefill as sgl_prefill
from sglang.srt.disaggregation import utils as sgl_disagg_utils
from sglang.srt.disaggregation.base import KVPoll
from sglang.srt.managers.schedule_batch import Req
from sglang.srt.mem_cache import common as sgl_common
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
from sglang.srt.mem_cache.radix_cache import RadixCache
from sglang.srt.plugins.hook_registry import HookType, _wrap_fn

from adrenaline_sgl.sglang_ext import flags, prefill_hooks
from adrenaline_sgl.sglang_ext.prefill_executor import build_prefill_executor

SLOTS, LAYERS, HKV, D = 64, 2, 2, 8
RESERVE = 4  # the executor's decode-token slots (the demo's --adrenaline-executor-max-tokens, scaled down)


@pytest.fixture(scope="module")
def sgl_context(tmp_path_factory, tiny_llama_context):
    return tiny_llama_context(tmp_path_factory, "prefill", HKV, LAYERS)


@pytest.fixture
def hooked(monkeypatch):
    """The prefill hooks as HookRegistry.apply_hooks installs them (AROUND wrappers), reversibly."""
    mixin = sgl_prefill.SchedulerDisaggregationPrefillMixin
    monkeypatch.setattr(mixin, "process_disagg_prefill_inflight_queue",
                        _wrap_fn(mixin.process_disagg_prefill_inflight_queue, prefill_hooks.inflight_hook,
                                 HookType.AROUND))  # fmt: skip
    wrapped_release = _wrap_fn(sgl_common.release_kv_cache, prefill_hooks.release_kv_hook, HookType.AROUND)
    monkeypatch.setattr(sgl_common, "release_kv_cache", wrapped_release)
    monkeypatch.setattr(sgl_prefill, "release_kv_cache", wrapped_release)  # the stale binding apply_hooks fixes
    monkeypatch.setattr(sgl_disagg_utils, "all_reduce_flags", lambda flags, group, op: flags)  # one rank


class Sender:
    def poll(self):
        return KVPoll.Success

    def clear(self):
        pass


class PrefillScheduler(sgl_prefill.SchedulerDisaggregationPrefillMixin):
    """The attributes SGLang's inflight queue reads, with an executor over the pool (reserve `RESERVE`)."""

    def __init__(self):
        self.server_args = types.SimpleNamespace(_adrenaline=flags.AdrenalineArgs(role="prefill"))
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
        self.scheduler_stage_metrics = None
        self.waiting_queue, self.chunked_req, self.mm_receiver = [], None, None
        self.free0 = self.free_slots()
        self.kept, self.service = build_prefill_executor(self.token_to_kv_pool_allocator, reserve_tokens=RESERVE,
                                                         attention="reference")  # fmt: skip
        setattr(self, prefill_hooks.STORE_ATTR, self.kept)

    def prefilled(self, rid: str, prompt_len: int, room: int, shared_from: Req | None = None) -> Req:
        """An offloaded request as the prefill forward leaves it (row + slots, first token out, in flight).
        `shared_from`: its first `prompt_len - 1` slots are that request's (a radix-cached prefix both matched),
        protected from its own release as SGLang protects a matched prefix."""
        from sglang.srt.sampling.sampling_params import SamplingParams

        req = Req(rid, "", array("q", range(1, prompt_len + 1)),
                  SamplingParams(max_new_tokens=8, custom_params={"adrenaline_offload": True}),
                  bootstrap_host="2.2.2.2", bootstrap_room=room)  # fmt: skip
        self.req_to_token_pool.alloc([req])
        row = req.kv.req_pool_idx
        if shared_from is None:
            slots = self.token_to_kv_pool_allocator.alloc(prompt_len)
        else:
            prefix = self.req_to_token_pool.req_to_token[shared_from.kv.req_pool_idx, : prompt_len - 1]
            slots = torch.cat([prefix.to(torch.int64), self.token_to_kv_pool_allocator.alloc(1)])
            req.kv.cache_protected_len = prompt_len - 1
        self.req_to_token_pool.write((row, slice(0, prompt_len)), slots)
        req.kv.kv_allocated_len = req.kv.kv_committed_len = prompt_len
        req.output_ids.append(42)
        req.disagg_kv_sender = Sender()
        self.disagg_prefill_inflight_queue.append(req)
        return req

    def free_slots(self) -> int:
        return self.token_to_kv_pool_allocator.available_size()

    def release_all_and_check(self) -> None:
        """Decode's releases for every room still kept, two scheduler passes, then SGLang's idle invariant."""
        for key in list(self.kept._kept):
            self.kept.request_release(key)
        self.process_disagg_prefill_inflight_queue()
        self.process_disagg_prefill_inflight_queue()
        assert self.kept.num_reqs == 0 and self.service.executor.rids == []
        assert self.free_slots() + self.tree_cache.evictable_size() == self.free0 - RESERVE  # nothing leaked


def test_defect1_executor_reserve_full_fails_one_request_not_the_scheduler(sgl_context, hooked):
    """Defect 1: 48-64 concurrent short requests on the demo: an offloaded request sharing a cached prefix with
    another gets a private copy of its prompt in the executor's reserve; when the reserve is full, `adopt_copy`
    raised PoolFullError out of `release_kv_hook`, through SGLang's inflight queue, and killed the scheduler.
    Here the reserve holds 4 tokens and the second request needs 6."""
    with sgl_context():
        s = PrefillScheduler()
        first = s.prefilled("a", 6, room=1)
        s.prefilled("b", 6, room=2, shared_from=first)  # shares 5 prompt slots with a: a copy, 6 tokens needed
        s.process_disagg_prefill_inflight_queue()  # must not raise: one request may fail, never the scheduler
        assert s.disagg_prefill_inflight_queue == []  # both handed over (b may have failed, alone)
        assert "room-1" in s.service.executor.rids  # the request that fits is served
        s.release_all_and_check()


def test_defect2_same_bootstrap_room_twice_does_not_kill_the_scheduler(sgl_context, hooked):
    """Defect 2: a chat request with `"n": 2` becomes SGLang requests that share one bootstrap room (its
    prefix warm-up and each sample copy `obj[0]`'s room), so both reach the executor under one id:
    `OffloadError: request 'room-5' is already held by the executor` escaped into the scheduler loop."""
    with sgl_context():
        s = PrefillScheduler()
        s.prefilled("sample-0", 5, room=5)
        s.prefilled("sample-1", 5, room=5)
        s.process_disagg_prefill_inflight_queue()  # must not raise
        assert s.disagg_prefill_inflight_queue == []
        s.release_all_and_check()


def test_defect3_release_before_adopt_still_frees_the_kv(sgl_context, hooked):
    """Defect 3: with `max_new_tokens: 1` decode finishes (and sends `release`) as soon as the first token
    arrives, which can be before this scheduler's next inflight pass keeps and adopts the KV; the release was
    drained first and dropped as unknown, then the KV was kept forever (12 concurrent x 3 rounds: 143 tokens)."""
    with sgl_context():
        s = PrefillScheduler()
        s.prefilled("short", 5, room=9)
        s.service.control("release", {"rid": "room-9"}, {})  # decode's release, on the transport's thread
        s.process_disagg_prefill_inflight_queue()  # drains (room-9 unknown yet), then keeps room-9
        s.process_disagg_prefill_inflight_queue()  # the next pass: nothing will ever release it again
        assert "room-9" not in s.kept, "KV of a request decode already released is still kept"
        assert s.free_slots() + s.tree_cache.evictable_size() == s.free0 - RESERVE


def test_the_stand_in_frees_everything_in_the_ordinary_order(sgl_context, hooked):
    """Control for the three above: keep, adopt, then decode's release: every slot back (passes today)."""
    with sgl_context():
        s = PrefillScheduler()
        s.prefilled("a", 3, room=11)
        s.prefilled("b", 4, room=12)
        s.process_disagg_prefill_inflight_queue()
        assert sorted(s.service.executor.rids) == ["room-11", "room-12"] and s.kept.num_tokens == 7
        s.release_all_and_check()

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
    monkeypatch.setattr(mixin, "handle_inflight_transfer_failure",
                        _wrap_fn(mixin.handle_inflight_transfer_failure, prefill_hooks.transfer_failure_hook,
                                 HookType.AROUND))  # fmt: skip


def hand_off(s, req) -> None:
    """The last KV send of `req` (after its prefill forward, before decode hears of it), through the hook."""
    prefill_hooks.send_kv_chunk_hook(lambda self, r, last_chunk, end_idx: r.disagg_kv_sender.send(torch.empty(3)),
                                     s, req, last_chunk=True)  # fmt: skip


class KVManager:
    """SGLang's failure records of a KV manager (`CommonKVManager.record_failure`), by bootstrap room."""

    def __init__(self):
        self.failures: dict[int, str] = {}

    def record_failure(self, bootstrap_room: int, failure_reason: str) -> None:
        self.failures[bootstrap_room] = failure_reason


class Sender:
    """The KV sender: Success, unless a failure was recorded for its room before the last send (then Failed, as
    `CommonKVManager.conclude_transfer` turns a recorded failure into `Failed` for both sides)."""

    def __init__(self, room: int | None = None):
        self.room, self.kv_mgr, self.sent = room, KVManager(), []

    def poll(self):
        return KVPoll.Failed if self.room in self.kv_mgr.failures else KVPoll.Success

    def send(self, kv_indices, *args, **kwargs):
        self.sent.append(len(kv_indices))

    def failure_exception(self):
        raise RuntimeError(self.kv_mgr.failures.get(self.room, "Failed due to an unknown reason"))

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

    def _release_aborted_request(self, req: Req) -> None:
        """Scheduler's: frees a request's LoRA and session references (none here)."""

    def prefilled(self, rid: str, prompt_len: int, room: int, shared_from: Req | None = None,
                  max_new_tokens: int = 8) -> Req:  # fmt: skip
        """An offloaded request as the prefill forward leaves it (row + slots, first token out, in flight).
        `shared_from`: its first `prompt_len - 1` slots are that request's (a radix-cached prefix both matched),
        protected from its own release as SGLang protects a matched prefix."""
        from sglang.srt.sampling.sampling_params import SamplingParams

        req = Req(rid, "", array("q", range(1, prompt_len + 1)),
                  SamplingParams(max_new_tokens=max_new_tokens, custom_params={"adrenaline_offload": True}),
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
        req.disagg_kv_sender = Sender(room)
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


def _decode(s, key: str, steps: int) -> None:
    """`steps` decode steps of `key` on the executor (every layer), as decode's backend drives them."""
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        s.service.executor.begin_step([key])
        for layer in range(LAYERS):
            q, k, v = torch.randn(1, HKV, D, generator=g), torch.randn(1, HKV, D, generator=g), \
                torch.randn(1, HKV, D, generator=g)  # fmt: skip
            s.service.executor.step(layer, [key], q, k, v)


def test_defect7_an_offloaded_request_decodes_its_full_length_past_the_executor_reserve(sgl_context, hooked):
    """Defect 7 (unit form; tests/e2e has it on real servers): the executor's decode-token slots were one shared
    reserve (`--adrenaline-executor-max-tokens`); a request decoding more tokens than it held was aborted when it
    ran out (`begin_step: PoolFullError`, which also failed every other offloaded row of decode's step). The
    request's full length is credited at the hand-off, growing the executor's slots from the pool when the
    reserve is short, and given back at release. Here the reserve is 4 and the request decodes 11 tokens."""
    with sgl_context():
        s = PrefillScheduler()
        req = s.prefilled("long", 5, room=21, max_new_tokens=12)
        # SGLang's prefill queue sets max_new_tokens to 1 (its memory estimate): the request's own is remembered
        prefill_hooks.process_req_hook(sgl_prefill.PrefillBootstrapQueue._process_req, None, req)
        assert req.sampling_params.max_new_tokens == 1
        hand_off(s, req)
        s.process_disagg_prefill_inflight_queue()
        assert "room-21" in s.service.executor.rids
        _decode(s, "room-21", 12 - 1)  # every token decode produces after prefill's first
        assert s.service.executor.seq_len("room-21") == 5 + 11
        s.release_all_and_check()  # the grown slots are back in SGLang's pool
        assert s.kept.capacity_tokens == RESERVE


def test_capacity_is_admission_a_request_the_executor_cannot_hold_fails_alone(sgl_context, hooked):
    """Capacity is admission, not an exception: a request whose decode length the executor cannot hold (not in
    its reserve, not in the pool's free slots) is refused at the hand-off through SGLang's own transfer failure
    (decode gets `Failed` with the reason and aborts that request alone); this scheduler releases it as a failed
    transfer with that error, and the request next to it is served."""
    with sgl_context():
        s = PrefillScheduler()
        ok = s.prefilled("ok", 5, room=31)
        huge = s.prefilled("huge", 5, room=32, max_new_tokens=10_000)  # more than the whole pool
        for req in (ok, huge):
            hand_off(s, req)
        assert 32 not in ok.disagg_kv_sender.kv_mgr.failures and huge.disagg_kv_sender.sent == [0]  # metadata only
        assert "cannot hold request room-32" in huge.disagg_kv_sender.kv_mgr.failures[32]
        s.process_disagg_prefill_inflight_queue()
        assert s.disagg_prefill_inflight_queue == [] and s.service.executor.rids == ["room-31"]
        assert "cannot hold request room-32" in huge.finished_reason.message and "room-32" not in s.kept
        assert s.kept.credited_tokens == 8 - 1 + 2  # only ok's credit
        s.release_all_and_check()


def test_credit_of_a_request_whose_transfer_fails_after_the_hand_off_goes_back(sgl_context, hooked):
    """KV accounting closed when the transfer fails (or is aborted) after the request was credited: its release
    is SGLang's failed-transfer release, and its credited (grown) slots go back to the pool."""
    with sgl_context():
        s = PrefillScheduler()
        req = s.prefilled("lost", 5, room=41, max_new_tokens=20)
        hand_off(s, req)
        assert s.kept.credited_tokens == 20 - 1 + 2 and s.kept.capacity_tokens >= 21
        req.disagg_kv_sender.kv_mgr.failures[41] = "decode went away"  # the transfer fails afterwards
        s.process_disagg_prefill_inflight_queue()
        assert "room-41" not in s.kept and s.kept.credited_tokens == 0 and s.kept.capacity_tokens == RESERVE
        s.release_all_and_check()


def test_n2_second_sample_on_the_same_room_is_refused_at_the_hand_off(sgl_context, hooked):
    """Defect 2 at the hand-off: the second request on a bootstrap room already offloaded (n > 1) is refused
    there, with a clear reason for both sides, before decode could mix the two samples up."""
    with sgl_context():
        s = PrefillScheduler()
        first, second = s.prefilled("sample-0", 5, room=51), s.prefilled("sample-1", 5, room=51)
        hand_off(s, first)
        hand_off(s, second)
        assert "already offloaded" in second.disagg_kv_sender.kv_mgr.failures[51]
        s.process_disagg_prefill_inflight_queue()  # (in SGLang the status is per room: the first may fail too)
        assert s.disagg_prefill_inflight_queue == [] and s.service.executor.rids == ["room-51"]
        assert "already offloaded" in second.finished_reason.message
        s.release_all_and_check()

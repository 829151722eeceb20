"""Decode allocation hooks on real SGLang classes: an offloaded row takes no local KV slot per decode step,
and SGLang's own release at finish and abort gives back exactly what was taken.

Real: `ScheduleBatch.prepare_for_decode` / `new_tokens_required_next_decode` / `check_decode_mem` /
`_get_decode_retraction_order`, `DecodePreallocQueue._pre_alloc` / `_active_req_count`,
`_required_admission_tokens` / `_allocatable_token_budgets` / `_prealloc_reservation_fits` (the admission
`pop_preallocated` runs), `DecodeReqToTokenPool`, `MHATokenToKVPool`, `TokenToKVPoolAllocator`,
`RadixCache` (disabled, as on decode by default), `Req`, `release_kv_cache`; hooks wrapped as `HookRegistry`
wraps them (AROUND). The batch object is a real `ScheduleBatch` with the fields a decode step reads (the
scheduler's `init_new` needs a model).
"""

from __future__ import annotations

import types
from array import array
from http import HTTPStatus

import pytest
import torch
from sglang.srt.disaggregation.decode import DecodePreallocQueue, DecodeReqToTokenPool
from sglang.srt.managers import schedule_batch as sgl_batch
from sglang.srt.managers.schedule_batch import FINISH_ABORT, FINISH_LENGTH, Req, ScheduleBatch
from sglang.srt.mem_cache import common as sgl_common
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
from sglang.srt.mem_cache.radix_cache import RadixCache
from sglang.srt.plugins.hook_registry import HookType, _wrap_fn
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

from adrenaline_sgl.offload import decode_state
from adrenaline_sgl.sglang_ext import decode_alloc, decode_hooks, flags, prefill_hooks

SLOTS, LAYERS, HKV, D, RESERVED, PROMPT, STEPS = 64, 2, 2, 8, 4, 5, 3


@pytest.fixture(scope="module")
def sgl_context(tmp_path_factory, tiny_llama_context):
    return tiny_llama_context(tmp_path_factory, "decode", HKV, LAYERS)


def _around(monkeypatch, owner, name, hook, static=False):
    original = owner.__dict__[name].__func__ if static else getattr(owner, name)
    wrapped = _wrap_fn(original, hook, HookType.AROUND)
    monkeypatch.setattr(owner, name, staticmethod(wrapped) if static else wrapped)


@pytest.fixture
def hooked(monkeypatch, releasing_offload):
    """Every decode hook installed as apply_hooks would (reversibly); yields (DecodeOffload, client, release)."""
    _around(monkeypatch, DecodePreallocQueue, "_pre_alloc", decode_hooks.pre_alloc_hook)
    _around(monkeypatch, DecodePreallocQueue, "_active_req_count", decode_alloc.active_req_count_hook)
    _around(monkeypatch, DecodePreallocQueue, "_required_admission_tokens", decode_alloc.admission_tokens_hook)
    _around(monkeypatch, sgl_batch, "alloc_for_decode", decode_alloc.alloc_for_decode_hook)
    _around(monkeypatch, ScheduleBatch, "new_tokens_required_next_decode", decode_alloc.new_tokens_hook)
    _around(monkeypatch, ScheduleBatch, "_get_decode_retraction_order", decode_alloc.retraction_order_hook,
            static=True)  # fmt: skip
    release = _wrap_fn(sgl_common.release_kv_cache, prefill_hooks.release_kv_hook, HookType.AROUND)
    monkeypatch.setattr(sgl_common, "release_kv_cache", release)
    state, client = releasing_offload
    yield state, client, release


def make_queue() -> DecodePreallocQueue:
    """A real DecodePreallocQueue with only what _pre_alloc reads (its __init__ needs a KV manager)."""
    q = DecodePreallocQueue.__new__(DecodePreallocQueue)
    q.token_to_kv_pool = MHATokenToKVPool(SLOTS, page_size=1, dtype=torch.float32, head_num=HKV, head_dim=D,
                                          layer_num=LAYERS, device="cpu", enable_memory_saver=False)  # fmt: skip
    q.token_to_kv_pool_allocator = TokenToKVPoolAllocator(SLOTS, torch.float32, "cpu", q.token_to_kv_pool, False)
    q.req_to_token_pool = DecodeReqToTokenPool(8, 32, "cpu", False, pre_alloc_size=4)
    q.tree_cache = RadixCache(CacheInitParams(disable=True, req_to_token_pool=q.req_to_token_pool,
                                              token_to_kv_pool_allocator=q.token_to_kv_pool_allocator,
                                              page_size=1))  # fmt: skip
    q.scheduler = types.SimpleNamespace(server_args=types.SimpleNamespace(
        _adrenaline=flags.AdrenalineArgs(role="decode")), enable_hisparse=False)  # fmt: skip
    q.num_reserved_decode_tokens = RESERVED
    return q


MAX_NEW = 8


def new_req(i: int, offloaded: bool) -> Req:
    return Req(f"r{i}", "", array("q", range(1, PROMPT + 1)),
               SamplingParams(max_new_tokens=MAX_NEW, custom_params={"adrenaline_offload": offloaded,
                                                                     "adrenaline_executor": "10.0.0.7:31000"}),
               bootstrap_host="10.0.0.7", bootstrap_room=100 + i)  # fmt: skip


def admit(q: DecodePreallocQueue, offloaded: list[bool]) -> list[Req]:
    """Requests admitted through the (hooked) prealloc queue; local ones hold their prompt's KV."""
    reqs = []
    for i, off in enumerate(offloaded):
        req = new_req(i, off)
        q._pre_alloc(req)
        req.kv.cache_protected_len = 0  # what SGLang's pop_preallocated sets right after _pre_alloc
        reqs.append(req)
    return reqs


def decode_batch(q: DecodePreallocQueue, reqs: list[Req]) -> ScheduleBatch:
    """A real ScheduleBatch in the state `prepare_for_decode` reads (right after the prebuilt step)."""
    rows = torch.tensor([r.kv.req_pool_idx for r in reqs], dtype=torch.int64)
    lens = torch.tensor([r.kv.kv_allocated_len for r in reqs], dtype=torch.int64)
    return ScheduleBatch(reqs=list(reqs), req_to_token_pool=q.req_to_token_pool,
                         token_to_kv_pool_allocator=q.token_to_kv_pool_allocator, tree_cache=q.tree_cache,
                         model_config=types.SimpleNamespace(is_encoder_decoder=False), device="cpu",
                         spec_algorithm=SpeculativeAlgorithm.NONE,
                         sampling_info=types.SimpleNamespace(penalizer_orchestrator=types.SimpleNamespace(
                             is_required=False)),
                         req_pool_indices=rows, req_pool_indices_cpu=rows.clone(), seq_lens=lens,
                         seq_lens_cpu=lens.clone(), orig_seq_lens=lens.to(torch.int32))  # fmt: skip


def step(batch: ScheduleBatch) -> torch.Tensor:
    """One decode step's scheduler-side preparation; the sampled token is appended as SGLang does."""
    batch.prepare_for_decode()
    for req in batch.reqs:
        req.output_ids.append(7)
    return batch.out_cache_loc.clone()


def row(q, req) -> list[int]:
    return q.req_to_token_pool.req_to_token[req.kv.req_pool_idx, : req.kv.kv_allocated_len].tolist()


MIXED = [True, False, True, False]  # 2 offloaded, 2 local rows


def test_offloaded_rows_take_no_slot_per_step(sgl_context, hooked):
    with sgl_context():
        q = make_queue()
        allocator = q.token_to_kv_pool_allocator
        reqs = admit(q, MIXED)
        batch = decode_batch(q, reqs)
        for n in range(1, STEPS + 1):
            free = allocator.available_size()
            head = allocator.free_pages[:2].tolist()  # the allocator hands out the head of its free list
            out = step(batch)
            assert allocator.available_size() == free - 2  # exactly the 2 local rows
            assert out[[0, 2]].tolist() == [0, 0]  # offloaded rows: the padding slot
            assert out[[1, 3]].tolist() == head  # local rows: fresh slots, in batch order
            for req, loc in zip(reqs, out.tolist(), strict=True):
                assert req.kv.kv_allocated_len == req.kv.kv_committed_len == PROMPT + n  # bookkeeping advances
                assert q.req_to_token_pool.req_to_token[req.kv.req_pool_idx, PROMPT + n - 1] == loc
        assert batch.seq_lens.tolist() == [PROMPT + STEPS] * 4
        for req in reqs[0::2]:
            assert row(q, req) == [0] * (PROMPT + STEPS)  # an offloaded row holds no local slot at all
            assert req.kv.cache_protected_len == req.kv.kv_allocated_len  # SGLang sees no KV of its own here
        for req in reqs[1::2]:
            assert 0 not in row(q, req) and req.kv.cache_protected_len == 0


@pytest.mark.parametrize("end", ["finish", "abort", "stop_before_last_token"])
def test_release_returns_exactly_what_was_taken(sgl_context, hooked, end):
    state, client, release = hooked
    with sgl_context():
        q = make_queue()
        allocator = q.token_to_kv_pool_allocator
        free0 = allocator.available_size()
        reqs = admit(q, MIXED)
        assert allocator.available_size() == free0 - 2 * PROMPT  # the local rows' prompt KV
        batch = decode_batch(q, reqs)
        for _ in range(STEPS):
            step(batch)
        assert allocator.available_size() == free0 - 2 * (PROMPT + STEPS)
        for req in reqs:
            if end == "abort":
                req.finished_reason = FINISH_ABORT("client closed", HTTPStatus.BAD_REQUEST)
            else:
                req.finished_reason = FINISH_LENGTH(length=STEPS)
            if end == "stop_before_last_token":  # owned_kv_len < kv_committed_len: SGLang's "overallocated" tail
                req.finished_len = 1
            release(req, q.tree_cache, checkpoint=end != "abort")
        assert allocator.available_size() == free0  # no leak
        free = allocator.free_pages.tolist()
        assert 0 not in free and len(free) == len(set(free))  # slot 0 never freed, nothing freed twice
        assert sorted(client.released) == ["room-100", "room-102"] and state.num_offloaded == 0


def test_batch_without_offloaded_rows_is_stock(sgl_context, hooked, monkeypatch):
    with sgl_context():
        runs = []
        for hooks_on in (True, False):
            if not hooks_on:  # the same admission and steps with SGLang's own allocation
                monkeypatch.setattr(sgl_batch, "alloc_for_decode", sgl_batch.alloc_for_decode.__wrapped__)
            q = make_queue()
            reqs = admit(q, [False] * 4)
            batch = decode_batch(q, reqs)
            outs = [step(batch).tolist() for _ in range(STEPS)]
            lens = [(r.kv.kv_allocated_len, r.kv.kv_committed_len, r.kv.cache_protected_len) for r in reqs]
            runs.append((outs, [row(q, r) for r in reqs], lens, q.token_to_kv_pool_allocator.available_size()))
        assert runs[0] == runs[1]
        assert len({s for out in runs[0][0] for s in out}) == 4 * STEPS  # every row got its own fresh slots


def test_decode_memory_check_and_retraction_order_leave_offloaded_rows_out(sgl_context, hooked):
    with sgl_context():
        q = make_queue()
        reqs = admit(q, MIXED)
        batch = decode_batch(q, reqs)
        step(batch)
        assert batch.new_tokens_required_next_decode() == 2  # one per local row (stock: one per row)
        assert batch.new_tokens_required_next_decode(selected_indices=[0, 2]) == 0
        allocator = q.token_to_kv_pool_allocator
        allocator.free_pages = allocator.free_pages[:1]  # one free slot left: 2 local rows do not fit
        assert not batch.check_decode_mem()
        assert batch.check_decode_mem(selected_indices=[0, 1, 2])  # 2 offloaded + 1 local fit
        order = ScheduleBatch._get_decode_retraction_order(batch.reqs)
        assert sorted(order[:2]) == [0, 2]  # offloaded kept first: retraction pops local rows from the end
        assert sorted(order[2:]) == [1, 3]


def test_admission_reserve_counts_only_local_requests(sgl_context, hooked):
    with sgl_context():
        q = make_queue()
        reqs = admit(q, MIXED)
        q.scheduler.running_batch = types.SimpleNamespace(reqs=reqs[:3])
        q.scheduler.waiting_queue = [reqs[3]]
        q.transfer_queue = types.SimpleNamespace(queue=[])
        assert q._active_req_count() == 2  # 2 local of 4 (stock: 4)
        assert q._active_req_count(extra_reserved_reqs=1) == 3


def admission_fits(q: DecodePreallocQueue, req: Req) -> tuple[int, bool]:
    """(demand, fits) exactly as `pop_preallocated` prices a request without decode radix cache or SWA."""
    retractable = sum(len(r.origin_input_ids) + len(r.output_ids) for r in q.scheduler.running_batch.reqs)
    demand = q._required_admission_tokens(
        req, q._required_alloc_tokens(fill_len=q._pre_alloc_fill_len(req), prefix_len=0), 0, retractable)
    budget = q._allocatable_token_budgets(retractable_tokens=retractable, count_retracted=True)
    return demand, q._prealloc_reservation_fits(demand, 0, full_allocatable_tokens=budget,
                                                swa_allocatable_tokens=None)  # fmt: skip


@pytest.mark.parametrize("offloaded", [True, False])
def test_admission_charges_an_offloaded_request_nothing(sgl_context, hooked, offloaded):
    """Two local requests run near the pool's cap: a local newcomer is refused as stock; an offloaded one,
    which takes no local slot, is admitted (stock charged it its prompt plus the reserve and refused it)."""
    with sgl_context():
        q = make_queue()
        running = admit(q, [False, False])
        q.scheduler.running_batch = types.SimpleNamespace(reqs=running)
        q.scheduler.waiting_queue, q.scheduler.last_batch = [], None
        q.transfer_queue, q.retracted_queue = types.SimpleNamespace(queue=[]), []
        allocator = q.token_to_kv_pool_allocator
        allocator.free_pages = allocator.free_pages[:12]  # budget: 12 free - 2 x RESERVED = 4 tokens
        req = new_req(9, offloaded)
        stock = max(PROMPT + RESERVED, PROMPT + MAX_NEW - 2 * PROMPT)  # SGLang's pricing: 9 > 4
        assert admission_fits(q, req) == ((0, True) if offloaded else (stock, False))
        decode_state.install(None)  # without the adrenaline backend: stock pricing for every request
        assert admission_fits(q, req) == (stock, False)


def test_admission_hook_target_is_what_pop_preallocated_calls():
    assert decode_alloc.ADMISSION_TOKENS.rsplit(".", 1)[1] in DecodePreallocQueue.pop_preallocated.__code__.co_names


def test_pop_preallocated_tries_offloaded_requests_first_each_group_in_arrival_order(hooked):
    """SGLang's `pop_preallocated` admits in queue order and stops at the first request that does not fit; the
    hook puts offloaded requests (no decode KV) ahead of local ones, keeping each group's order, so a local
    request waiting for memory holds up no offloaded one. Without the adrenaline backend the queue is stock."""
    q = make_queue()
    q.pp_size = 1
    entries = [types.SimpleNamespace(req=new_req(i, off)) for i, off in enumerate([False, True, False, True])]
    seen = []

    def original(self, rids_to_check=None, pp_good_rids=None, pp_bad_rids=None):  # records what SGLang would scan
        seen.append([d.req.rid for d in self.queue])
        return [], []

    hook = _wrap_fn(original, decode_alloc.offloaded_first_hook, HookType.AROUND)
    q.queue = list(entries)
    hook(q)
    assert seen[-1] == ["r1", "r3", "r0", "r2"]
    q.queue.append(types.SimpleNamespace(req=new_req(4, True)))  # a newer offloaded request: behind r1, r3 only
    hook(q)
    assert seen[-1] == ["r1", "r3", "r4", "r0", "r2"]
    decode_state.install(None)  # e.g. the attention backend is not 'adrenaline'
    q.queue = list(entries)
    hook(q)
    assert seen[-1] == ["r0", "r1", "r2", "r3"]


def test_pop_preallocated_stops_at_the_first_request_that_does_not_fit():
    """The stock behaviour the order hook exists for (sglang 0.5.23): a FIFO scan with a `break` on the first
    request whose admission does not fit, and the hook's target is that method."""
    import inspect

    source = inspect.getsource(DecodePreallocQueue.pop_preallocated)
    assert decode_alloc.POP_PREALLOCATED.rsplit(".", 1)[1] == DecodePreallocQueue.pop_preallocated.__name__
    assert "for i, decode_req in enumerate(self.queue):" in source
    fits = source.index("_prealloc_reservation_fits(")
    assert source.index("break", fits) < source.index("preallocated_reqs.append", fits)


def test_without_the_adrenaline_backend_everything_is_stock(sgl_context, hooked):
    with sgl_context():
        q = make_queue()
        reqs = admit(q, MIXED)
        decode_state.install(None)  # e.g. the attention backend is not 'adrenaline'
        batch = decode_batch(q, reqs)
        free = q.token_to_kv_pool_allocator.available_size()
        assert 0 not in step(batch).tolist()
        assert q.token_to_kv_pool_allocator.available_size() == free - 4
        assert batch.new_tokens_required_next_decode() == 4


def test_hook_target_is_the_name_prepare_for_decode_calls():
    import pkgutil

    owner, name = decode_alloc.ALLOC_FOR_DECODE.rsplit(".", 1)
    assert pkgutil.resolve_name(owner) is sgl_batch and hasattr(sgl_batch, name)
    assert name in ScheduleBatch.prepare_for_decode.__code__.co_names  # a module-global lookup at call time

"""Decode hooks on real SGLang classes: the prealloc queue admits an offloaded request without prompt KV,
and SGLang's own release at finish frees only its local decode slots and tells the executor.

Real: `DecodePreallocQueue._pre_alloc` / `_prealloc_required_tokens` (on a queue object with just the pools
set), `DecodeReqToTokenPool`, `MHATokenToKVPool`, `TokenToKVPoolAllocator`, `RadixCache` (disabled, as on
decode by default), `Req`, `release_kv_cache`, wrapped as `HookRegistry` wraps (AROUND).
"""

from __future__ import annotations

import types
from array import array

import pytest
import torch
from sglang.srt.disaggregation.decode import DecodePreallocQueue, DecodeReqToTokenPool
from sglang.srt.managers.schedule_batch import FINISH_LENGTH, Req
from sglang.srt.mem_cache import common as sgl_common
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
from sglang.srt.mem_cache.radix_cache import RadixCache
from sglang.srt.plugins.hook_registry import HookType, _wrap_fn
from sglang.srt.sampling.sampling_params import SamplingParams

from adrenaline_sgl.offload import decode_state
from adrenaline_sgl.offload.decode_state import OffloadedReq
from adrenaline_sgl.sglang_ext import decode_hooks, flags, prefill_hooks

SLOTS, LAYERS, HKV, D, RESERVED = 64, 2, 2, 8, 4


@pytest.fixture(scope="module")
def sgl_context(tmp_path_factory, tiny_llama_context):
    """A published-like runtime context (decode mode) from a weightless tiny Llama config."""
    return tiny_llama_context(tmp_path_factory, "decode", HKV, LAYERS)


@pytest.fixture
def offload(monkeypatch, releasing_offload):
    """Hooks installed as apply_hooks would (reversibly) and this process's DecodeOffload."""
    for name, hook in (("_pre_alloc", decode_hooks.pre_alloc_hook),
                       ("_prealloc_required_tokens", decode_hooks.required_tokens_hook)):  # fmt: skip
        monkeypatch.setattr(DecodePreallocQueue, name, _wrap_fn(getattr(DecodePreallocQueue, name), hook,
                                                                HookType.AROUND))  # fmt: skip
    release = _wrap_fn(sgl_common.release_kv_cache, prefill_hooks.release_kv_hook, HookType.AROUND)
    monkeypatch.setattr(sgl_common, "release_kv_cache", release)
    state, client = releasing_offload
    yield state, client, release


def make_queue(role: str = "decode") -> DecodePreallocQueue:
    """A real DecodePreallocQueue with only what _pre_alloc reads (its __init__ needs a KV manager)."""
    q = DecodePreallocQueue.__new__(DecodePreallocQueue)
    q.token_to_kv_pool = MHATokenToKVPool(SLOTS, page_size=1, dtype=torch.float32, head_num=HKV, head_dim=D,
                                          layer_num=LAYERS, device="cpu", enable_memory_saver=False)  # fmt: skip
    q.token_to_kv_pool_allocator = TokenToKVPoolAllocator(SLOTS, torch.float32, "cpu", q.token_to_kv_pool, False)
    q.req_to_token_pool = DecodeReqToTokenPool(4, 64, "cpu", False, pre_alloc_size=4)
    q.tree_cache = RadixCache(CacheInitParams(disable=True, req_to_token_pool=q.req_to_token_pool,
                                              token_to_kv_pool_allocator=q.token_to_kv_pool_allocator,
                                              page_size=1))  # fmt: skip
    q.scheduler = types.SimpleNamespace(server_args=types.SimpleNamespace(_adrenaline=flags.AdrenalineArgs(role=role)),
                                        enable_hisparse=False)  # fmt: skip
    q.num_reserved_decode_tokens = RESERVED
    return q


def make_req(rid: str, prompt_len: int, offload: bool, room: int = 11) -> Req:
    req = Req(rid, "", array("q", range(1, prompt_len + 1)),
              SamplingParams(max_new_tokens=8, custom_params={"adrenaline_offload": offload,
                                                              "adrenaline_executor": "10.0.0.7:31000"}),
              bootstrap_host="10.0.0.7", bootstrap_room=room)  # fmt: skip
    return req


def decode_one_token(q: DecodePreallocQueue, req: Req) -> int:
    """What a decode step's allocation does for one request: one new slot at the end of its row."""
    slot = int(q.token_to_kv_pool_allocator.alloc(1)[0])
    pos = req.kv.kv_allocated_len
    q.req_to_token_pool.write((req.kv.req_pool_idx, pos), slot)
    req.kv.kv_allocated_len = req.kv.kv_committed_len = pos + 1
    req.output_ids.append(7)
    return slot


def test_offloaded_request_is_admitted_without_prompt_kv(sgl_context, offload):
    state, client, release = offload
    with sgl_context():
        q = make_queue()
        free0, rows0 = q.token_to_kv_pool_allocator.available_size(), q.req_to_token_pool.available_size()
        off, plain = make_req("off", 20, True, room=11), make_req("plain", 20, False, room=12)
        assert q._prealloc_required_tokens(off)[0] == RESERVED  # admission charges no prompt KV
        assert q._prealloc_required_tokens(plain)[0] == 20 + RESERVED
        dst = q._pre_alloc(off)
        assert dst.numel() == 0  # no transfer destination: the KV is not sent here
        assert q.token_to_kv_pool_allocator.available_size() == free0  # no KV slot taken
        assert q.req_to_token_pool.available_size() == rows0 - 1 and off.kv.kv_committed_len == 20
        assert state.lookup(off.kv.req_pool_idx) == OffloadedReq("room-11", "10.0.0.7:31000", 20)  # shared room
        assert q._pre_alloc(plain).numel() == 20  # stock path: prompt KV preallocated
        assert q.token_to_kv_pool_allocator.available_size() == free0 - 20
        assert state.lookup(plain.kv.req_pool_idx) is None

        off.kv.cache_protected_len = 0  # what SGLang's pop_preallocated sets right after _pre_alloc
        # finish after two decode steps: SGLang's release frees the 2 local decode slots, not the prompt
        for _ in range(2):
            decode_one_token(q, off)
        assert q.token_to_kv_pool_allocator.available_size() == free0 - 22
        off.finished_reason = FINISH_LENGTH(length=2)
        release(off, q.tree_cache, checkpoint=True)
        assert q.token_to_kv_pool_allocator.available_size() == free0 - 20  # plain's prompt still held
        assert client.released == ["room-11"] and state.num_offloaded == 0  # the executor frees it on prefill


def test_decode_without_the_adrenaline_backend_falls_back_to_stock(sgl_context, offload):
    with sgl_context():
        decode_state.install(None)  # the attention backend is not 'adrenaline'
        q = make_queue()
        assert q._pre_alloc(make_req("off", 6, True)).numel() == 6


def test_stock_role_changes_nothing(sgl_context, offload):
    with sgl_context():
        q = make_queue(role="none")
        assert q._pre_alloc(make_req("off", 6, True)).numel() == 6
        assert q._prealloc_required_tokens(make_req("off2", 6, True))[0] == 6 + RESERVED

"""Bad input gets one clear ValueError line before any Triton launch, never a crash inside a kernel."""

from __future__ import annotations

import pytest
import torch
from adrenaline_kernels import DecodeAttentionWrapper, KernelConfig, append_kv, decode_attention, merge_state
from adrenaline_kernels.inputs import make_decode_batch


@pytest.fixture
def batch():
    return make_decode_batch([5, 3], 8, 2, 64, torch.float16)


def _attend(b, **override):
    args = dict(q=b.q, k_buffer=b.k_buffer, v_buffer=b.v_buffer, kv_indptr=b.kv_indptr, kv_indices=b.kv_indices)
    args.update(override)
    return decode_attention(**args)


@pytest.mark.parametrize(
    "override,match",
    [
        (lambda b: dict(k_buffer=b.k_buffer.float()), r"k_buffer dtype must be one of \(float16\), got float32"),
        (lambda b: dict(v_buffer=b.v_buffer.bfloat16()), r"v_buffer dtype must be one of \(float16\), got bfloat16"),
        (lambda b: dict(q=b.q.int()), r"q dtype must be one of"),
        (lambda b: dict(q=b.q[:, :, None]), r"q must have rank 3 \[\*, \*, \*\], got shape \[2, 8, 1, 64\]"),
        (lambda b: dict(k_buffer=b.k_buffer[0]), r"k_buffer must have rank 3"),
        (lambda b: dict(kv_indptr=torch.tensor([0, 5, 3], dtype=torch.int32)), r"kv_indptr must be non-decreasing"),
        (lambda b: dict(kv_indptr=b.kv_indptr.long()), r"kv_indptr dtype must be one of \(int32\), got int64"),
        (lambda b: dict(kv_indptr=b.kv_indptr[:2]), r"kv_indptr must have shape \[3\], got \[2\]"),
        (lambda b: dict(kv_indptr=torch.tensor([0, 5, 99], dtype=torch.int32)), r"kv_indptr\[-1\] \(99\) must be <="),
        (lambda b: dict(kv_indices=b.kv_indices.clone().fill_(100)), r"kv_indices reach slot 100 but the pool has"),
        (lambda b: dict(kv_indices=b.kv_indices.clone().fill_(-1)), r"kv_indices must be token slots >= 0"),
        (lambda b: dict(q=torch.randn(2, 7, 64).half()), r"num_qo_heads \(7\) must be a multiple of num_kv_heads"),
        (lambda b: dict(q=b.q.transpose(1, 2).contiguous().transpose(1, 2)), r"q must be contiguous in its last dim"),
        (lambda b: dict(v_buffer=b.v_buffer[:-1]), r"k_buffer and v_buffer must have the same num_slots"),
        (lambda b: dict(q=torch.randn(2, 8, 512).half()), r"head_dim must be in \[1, 256\], got 512"),
    ],
    ids=[
        "kv_dtype_mix", "v_dtype_mix", "q_int", "q_rank4", "k_rank2", "indptr_not_monotonic", "indptr_int64",
        "indptr_wrong_length", "indptr_past_indices", "slot_outside_pool", "negative_slot", "heads_not_dividing",
        "q_not_contiguous", "k_v_slot_mismatch", "head_dim_too_big",
    ],
)  # fmt: skip
def test_decode_attention_rejects(batch, override, match):
    with pytest.raises(ValueError, match=match):
        _attend(batch, **override(batch))


def test_wrapper_run_checks_against_its_plan(batch):
    wrapper = DecodeAttentionWrapper()
    with pytest.raises(ValueError, match=r"call DecodeAttentionWrapper.plan\(\) before run\(\)"):
        wrapper.run(batch.q, batch.k_buffer, batch.v_buffer)
    wrapper.plan(batch.kv_indptr, batch.kv_indices, 8, 2, 64, torch.float16)
    with pytest.raises(ValueError, match=r"q must have shape \[2, 8, 64\], got \[3, 8, 64\]"):
        wrapper.run(torch.randn(3, 8, 64).half(), batch.k_buffer, batch.v_buffer)
    with pytest.raises(ValueError, match=r"k_buffer must have shape \[\*, 2, 64\], got \[\d+, 4, 32\]"):
        k = batch.k_buffer.view(-1, 4, 32)
        wrapper.run(batch.q, k, k)
    with pytest.raises(ValueError, match=r"lse_out dtype must be one of \(float32\)"):
        wrapper.run(batch.q, batch.k_buffer, batch.v_buffer, lse_out=torch.empty(2, 8, dtype=torch.float16))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_splits=0), r"num_splits must be in \[1, 256\], got 0"),
        (dict(num_sms=0), r"num_sms must be an int >= 1, got 0"),
        (dict(dtype=torch.float64), r"dtype must be float16, bfloat16 or float32"),
        (dict(num_kv_heads=0), r"num_kv_heads must be an int >= 1, got 0"),
        (dict(sm_scale=float("nan")), r"sm_scale must be a finite float > 0 \(default 1/sqrt\(head_dim\)\), got nan"),
        (dict(seq_lens=[5]), r"seq_lens must have B = 2 entries, got 1"),
        (dict(seq_lens=[5, -1]), r"seq_lens must be >= 0, got -1"),
        (dict(seq_lens=[5, 30]), r"sum\(seq_lens\) \(35\) must be <= len\(kv_indices\) \(8\)"),
    ],
)
def test_plan_rejects(batch, kwargs, match):
    args = dict(num_qo_heads=8, num_kv_heads=2, head_dim=64, dtype=torch.float16) | kwargs
    with pytest.raises(ValueError, match=match):
        DecodeAttentionWrapper().plan(batch.kv_indptr, batch.kv_indices, **args)


def test_kernel_config_validation():
    with pytest.raises(ValueError, match=r"KernelConfig.block_n must be one of 16, 32, 64, 128, got 48"):
        KernelConfig(block_n=48)
    with pytest.raises(ValueError, match=r"KernelConfig.num_warps"):
        KernelConfig(num_warps=3)


def test_merge_state_rejects():
    o, lse = torch.randn(4, 2, 64), torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"o_b must have shape \[4, 2, 64\], got \[4, 3, 64\]"):
        merge_state(o, lse, torch.randn(4, 3, 64), lse)
    with pytest.raises(ValueError, match=r"o_a, o_b must share one dtype, got o_a=float32, o_b=float16"):
        merge_state(o, lse, o.half(), lse)
    with pytest.raises(ValueError, match=r"lse_b dtype must be one of \(float32\), got float16"):
        merge_state(o, lse, o, lse.half())
    with pytest.raises(ValueError, match=r"lse_a must have rank 2"):
        merge_state(o, lse[..., None], o, lse)


def test_append_kv_rejects():
    k_buf, v_buf = torch.zeros(10, 2, 64), torch.zeros(10, 2, 64)
    new = torch.randn(2, 2, 64)
    slots = torch.tensor([1, 2], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"slots must be in \[0, 10\), got range \[1, 10\]"):
        append_kv(k_buf, v_buf, torch.tensor([1, 10]), new, new)
    with pytest.raises(ValueError, match=r"k_new dtype must be one of \(float32\), got float16"):
        append_kv(k_buf, v_buf, slots, new.half(), new)
    with pytest.raises(ValueError, match=r"v_new must have shape \[2, 2, 64\], got \[3, 2, 64\]"):
        append_kv(k_buf, v_buf, slots, new, torch.randn(3, 2, 64))
    with pytest.raises(ValueError, match=r"slots dtype must be one of \(int32, int64\), got float32"):
        append_kv(k_buf, v_buf, slots.float(), new, new)
    assert (k_buf == 0).all(), "a rejected call must not write"

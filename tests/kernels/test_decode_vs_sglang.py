"""Cross-check against SGLang's own Triton decode kernel on identical inputs.

SGLang's stage 2 writes no final LSE; the final LSE is the logsumexp of its per-split LSEs (splits it did
not touch keep the -inf we initialise them with).
"""

from __future__ import annotations

import pytest
import torch
from adrenaline_kernels import decode_attention
from adrenaline_kernels.inputs import make_decode_batch

sglang_decode = pytest.importorskip(
    "sglang.kernels.ops.attention.decode_attention", reason="sglang is not installed (GPU machine?)"
)

MAX_KV_SPLITS = 4


def _sglang_decode(batch, num_kv_splits: list[int]):
    b, hq, d = batch.q.shape
    o = torch.empty_like(batch.q)
    attn_logits = torch.empty(b, hq, MAX_KV_SPLITS, d, dtype=torch.float32)
    attn_lse = torch.full((b, hq, MAX_KV_SPLITS), float("-inf"), dtype=torch.float32)
    sglang_decode.decode_attention_fwd(
        batch.q, batch.k_buffer, batch.v_buffer, o, batch.kv_indptr, batch.kv_indices, attn_logits, attn_lse,
        torch.tensor(num_kv_splits, dtype=torch.int32), MAX_KV_SPLITS, d**-0.5, 1.0, 1.0,
    )  # fmt: skip
    return o, torch.logsumexp(attn_lse, dim=-1)


# SGLang's grouped kernel sets padded head rows to -inf (-inf - -inf in those masked rows); numpy, under the
# interpreter, warns about it. Those rows are never stored.
@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")
@pytest.mark.parametrize(
    "dtype,hq,hkv,tol",
    [(torch.float32, 8, 2, 2e-5), (torch.float32, 4, 4, 2e-5), (torch.float16, 9, 3, 4e-3)],
    ids=["fp32-gqa4", "fp32-mha", "fp16-gqa3"],
)
def test_matches_sglang_decode_attention_fwd(dtype, hq, hkv, tol):
    seq_lens = [1, 70, 129]
    batch = make_decode_batch(seq_lens, hq, hkv, 64, dtype, seed=11)
    o, lse = decode_attention(batch.q, batch.k_buffer, batch.v_buffer, batch.kv_indptr, batch.kv_indices, num_sms=16)
    sg_o, sg_lse = _sglang_decode(batch, num_kv_splits=[1, 2, 4])
    err_o = (o.float() - sg_o.float()).abs().max().item()
    err_lse = (lse - sg_lse).abs().max().item()
    assert err_o <= tol, f"max |o - sglang o| = {err_o:.3g} > {tol}"
    assert err_lse <= tol, f"max |lse - sglang lse| = {err_lse:.3g} > {tol}"

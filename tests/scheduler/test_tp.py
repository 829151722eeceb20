"""Tensor parallelism in the cost model: per-GPU shards, their memory, and the step's collectives."""

import pytest

from adrenaline_sgl.scheduler.cost_model import OpCost, get_predictor
from adrenaline_sgl.scheduler.ops import comm_messages, op_work
from adrenaline_sgl.scheduler.specs import TPShard, get_gpu, get_model, valid_tps

M70 = get_model("llama2-70b")
M7 = get_model("llama2-7b")
A100 = get_gpu("a100-80g")

# (op, phase, num_tokens, context_tokens, num_seqs): GEMMs, attention both phases, the LM head
CALLS = [
    ("qkv", "decode", 16, 0, 1),
    ("o_proj", "prefill", 1000, 0, 1),
    ("ffn", "prefill", 512, 0, 1),
    ("attn", "prefill", 2048, 0, 2),
    ("attn", "decode", 32, 32 * 900, 32),
]


@pytest.mark.parametrize("model", [M7, M70])
@pytest.mark.parametrize("call", CALLS)
def test_sharded_work_sums_to_the_tp1_work(model, call):
    op, phase, t, ctx, seqs = call
    whole = op_work(model, op, phase, t, ctx, seqs)
    for tp in (2, 4, 8):
        shard = op_work(model, op, phase, t, ctx, seqs, tp=tp)
        assert shard.flops * tp == pytest.approx(whole.flops, rel=1e-12), (op, tp)
        assert shard.reread_bytes * tp == pytest.approx(whole.reread_bytes, rel=1e-12), (op, tp)  # weights; K,V
        assert shard.min_bytes < whole.min_bytes


def test_lm_head_is_split_but_softmax_runs_on_the_gathered_vocabulary():
    whole, shard = op_work(M70, "sampling", "decode", 64), op_work(M70, "sampling", "decode", 64, tp=4)
    assert shard.reread_bytes * 4 == whole.reread_bytes  # LM head weights: 32000 / 4 rows each
    softmax = 5.0 * 64 * 32000
    assert (shard.flops - softmax) * 4 == pytest.approx(whole.flops - softmax)


def test_norms_are_replicated_and_rope_follows_the_heads():
    whole, shard = op_work(M70, "misc", "decode", 8), op_work(M70, "misc", "decode", 8, tp=8)
    norms = 8 * 2 * 8 * 8192  # two add+RMSNorm over the full hidden size, on every GPU
    assert shard.flops == norms + 8 * 6 * (1024 + 128) and whole.flops == norms + 8 * 6 * (8192 + 1024)


def test_kv_heads_split_where_tp_divides_them_and_replicate_beyond():
    assert [M70.shard(t).kv_heads for t in (1, 2, 4, 8)] == [8, 4, 2, 1]
    s16 = M70.shard(16)  # 8 KV heads on 16 GPUs: one head each, every head on 2 GPUs (SGLang's QKVParallelLinear)
    assert (s16.q_heads, s16.kv_heads, s16.kv_replicas) == (4, 1, 2)
    qkv16 = op_work(M70, "qkv", "decode", 1, tp=16)
    assert qkv16.flops * 16 > op_work(M70, "qkv", "decode", 1).flops  # replicated K,V projections
    assert s16.kv_bytes_per_token == 80 * 2 * 128 * 2


def test_weights_per_gpu_split_all_but_the_norms():
    for tp in (2, 4, 8):
        s = M70.shard(tp)
        replicated = 80 * 2 * 8192 + 8192  # two RMSNorm weights per layer and the final norm
        assert tp * s.num_params == M70.num_params + (tp - 1) * replicated
        assert s.kv_bytes_per_token * tp == M70.kv_bytes_per_token


def test_kv_capacity_per_instance_at_tp4():
    s = M70.shard(4)
    per_gpu = 0.88 * 80 * 1024**3 - s.weight_bytes
    assert s.kv_capacity_bytes(A100, 0.88) == pytest.approx(per_gpu)
    assert s.kv_capacity_tokens(A100, 0.88) == int(per_gpu // (80 * 2 * 2 * 128 * 2))
    assert get_predictor("roofline", A100, M70, tp=4).kv_capacity_tokens(0.88) == s.kv_capacity_tokens(A100, 0.88)
    # TP 1 agrees with the bounds' definition
    from adrenaline_sgl.scheduler.bounds import kv_capacity_bytes

    assert M7.shard(1).kv_capacity_bytes(A100, 0.9) == kv_capacity_bytes(A100, M7, 0.9)


def test_a_model_that_does_not_fit_names_the_smallest_tp_that_does():
    with pytest.raises(ValueError) as exc:
        M70.shard(1).check_fits(A100, 0.88, min_kv_tokens=4096)
    msg = str(exc.value)
    assert "\n" not in msg and "llama2-70b does not fit on a100-80g at tp=1" in msg and "use tp >= 2" in msg
    M70.shard(2).check_fits(A100, 0.88, min_kv_tokens=4096)  # 64.2 GiB of weights leave ~40k tokens


@pytest.mark.parametrize(
    "tp, match",
    [
        (3, r"tp=3 cannot split llama2-70b: it does not divide its 64 attention heads; valid tp: \[1, 2, 4, 8\]"),
        (0, "tp must be an integer >= 1"),
        (True, "tp must be an integer >= 1"),
        (2.0, "tp must be an integer >= 1"),
    ],
)
def test_bad_tp_is_a_one_line_error(tp, match):
    with pytest.raises(ValueError, match=match):
        TPShard(M70, tp)
    with pytest.raises(ValueError, match=match):
        get_predictor("roofline", "a100-80g", "llama2-70b", tp=tp)


def test_valid_tps_follow_heads_ffn_and_kv_heads():
    assert valid_tps(M70, 16) == [1, 2, 4, 8, 16]
    assert valid_tps(get_model("llama2-13b"), 10) == [1, 2, 4, 8]  # 5 and 10 split the 40 heads, not FFN 13824
    assert valid_tps(get_model("smollm2-135m"), 9) == [1, 3]  # 9 heads, 3 KV heads


def test_comm_messages_of_a_llama_step():
    msg = comm_messages(M70, 100, 4, tp=4)
    assert msg.allreduce_count == 2 * 80 + 1 and msg.allreduce_bytes == 100 * 8192 * 2
    assert msg.allgather_bytes == 4 * 32000 * 2
    assert comm_messages(M70, 100, 4, tp=1).allreduce_count == 0


class _FlatComm:
    """A comm model with round numbers: 10 us per all-reduce, 1 us per all-gather."""

    source = "test"

    def allreduce_ms(self, num_bytes, tp):
        return 0.01 if tp > 1 else 0.0

    def allgather_ms(self, total_bytes, tp):
        return 0.001 if tp > 1 else 0.0


def test_steps_add_the_collectives_at_tp_above_1():
    p1 = get_predictor("roofline", "a100-80g", "llama2-70b", tp=2)
    p = get_predictor("roofline", "a100-80g", "llama2-70b", tp=2, comm=_FlatComm())
    comm = p.comm_cost("decode", 64, 64)
    assert comm == OpCost("comm", "decode", 161 * 0.01 + 0.001, 0.0, 0.0)
    costs = p.decode_step_costs(64, 64 * 500)
    assert [c.op for c in costs] == ["qkv", "o_proj", "ffn", "misc", "attn", "sampling", "comm"]
    assert p.decode_nonattn_ms(64) == pytest.approx(sum(c.ms for c in p.decode_nonattn_costs(64)))
    assert p.decode_nonattn_ms(64) == pytest.approx(p1.decode_nonattn_ms(64) - p1.comm_cost("decode", 64, 64).ms
                                                    + comm.ms)  # fmt: skip
    prefill = p.prefill_step_costs([1000, 500])
    assert prefill[-1] == p.comm_cost("prefill", 1500, 2) and prefill[-1].ms > 0
    # TP 1: no comm entry, the same costs as before TP existed
    tp1 = get_predictor("roofline", "a100-80g", "llama2-7b")
    assert [c.op for c in tp1.decode_step_costs(4, 400)][-1] == "sampling" and tp1.comm_cost("decode", 4, 4).ms == 0


def test_more_gpus_make_a_70b_step_faster_and_its_comm_larger():
    ms = {tp: get_predictor("roofline", "a100-80g", "llama2-70b", tp=tp) for tp in (2, 4, 8)}
    steps = [ms[t].decode_step_ms(64, 64 * 1000) for t in (2, 4, 8)]
    comms = [ms[t].comm_cost("decode", 64, 64).ms for t in (2, 4, 8)]
    assert steps[0] > steps[1] > steps[2] and comms[0] < comms[1] < comms[2]
    # weights per GPU 64 / 32 / 16 GiB at ~75% of 2039 GB/s bound the decode step from below
    assert 40.0 < steps[0] and steps[2] < steps[1] < 45.0


def test_per_gpu_transfers_at_tp():
    p1 = get_predictor("roofline", "a100-80g", "llama2-70b", tp=2)
    p4 = get_predictor("roofline", "a100-80g", "llama2-70b", tp=4)
    # each GPU sends its own KV heads at once: the time is one GPU's share
    assert p4.kv_transfer_ms(1000) == pytest.approx(7.6e-3 + 1000 * 81920 / 300e9 * 1e3)
    assert p4.kv_transfer_ms(1000) < p1.kv_transfer_ms(1000)
    out, back = p4.offload_layer_bytes(16)
    assert out == 16 * (2048 + 2 * 256) * 2 and back == 16 * (2048 * 2 + 16 * 4)


def test_table_predictor_checks_the_tables_tp():
    from adrenaline_sgl.scheduler.table import ProfileTable, TableRow

    prov = {k: "x" for k in ("driver", "torch", "triton", "git_sha", "command")}
    rows = (TableRow("qkv", "decode", 1, 0, 1, 1.0, 0.01), TableRow("qkv", "decode", 64, 0, 1, 1.0, 0.02))
    t2 = ProfileTable({**prov, "gpu": "a100-80g", "model": "llama2-7b", "tp": "2"}, rows)
    p = get_predictor("table", "a100-80g", "llama2-7b", table=t2, tp=2, comm=_FlatComm())
    assert p.op_cost("qkv", "decode", 64).ms == 0.02 and p.comm_cost("decode", 64, 64).ms > 0
    with pytest.raises(ValueError, match="measured at tp=2, predictor wants tp=1"):
        get_predictor("table", "a100-80g", "llama2-7b", table=t2)

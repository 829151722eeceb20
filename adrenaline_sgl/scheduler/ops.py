"""Work of each operator: FLOPs and the minimum HBM bytes it must move, from the model shape alone.

No efficiency or hardware here (that is the predictors' job). Counts are for ONE decoder layer, except
`sampling` (final norm + LM head + softmax/sample), which runs once per model step.

Operators (`op`) and what `num_tokens` / `context_tokens` / `num_seqs` mean for each:

| op | phase | num_tokens | context_tokens | num_seqs |
|---|---|---|---|---|
| qkv, o_proj, ffn, misc | both | rows through the GEMMs (prefill: new tokens; decode: batch) | unused | unused |
| attn | prefill | new tokens of `num_seqs` equal-length prompts | cached prefix tokens in total | prompts |
| attn | decode | batch (one new token per sequence) | KV tokens read in total (sum of seq lens) | batch |
| sampling | both | rows that get logits (prefill: one per prompt; decode: batch) | unused | unused |

`misc` is the per-layer elementwise work: two RMSNorms with their residual adds and RoPE on q and k.
FLOP convention: a multiply-add is 2 FLOPs; causal prefill attention counts only the unmasked half.

Tensor parallelism (`tp`, see `specs.TPShard`): the work of ONE GPU of the group. QKV and the gate/up
GEMMs are column-parallel (output width / TP), O and down row-parallel (input width / TP), attention runs
on the GPU's q heads over its KV heads, the LM head on its vocabulary rows; the norms and residual adds
run replicated on the full hidden size; softmax and sampling run on the gathered full vocabulary on every
GPU (SGLang's LogitsProcessor all-gathers the logits). Summed over the TP GPUs the sharded GEMM and
attention work equals the TP 1 work, except that replicated KV heads are computed on each replica. The
communication (all-reduces, logits all-gather) is counted by `comm_messages`, its time by `collectives`.
"""

from __future__ import annotations

from dataclasses import dataclass

from adrenaline_sgl.scheduler.specs import ModelSpec, TPShard

OPS = ("qkv", "attn", "o_proj", "ffn", "misc", "sampling")
PHASES = ("prefill", "decode")
LAYER_OPS = ("qkv", "attn", "o_proj", "ffn", "misc")  # run once per layer; sampling once per step
GEMM_OPS = ("qkv", "o_proj", "ffn")


@dataclass(frozen=True)
class OpWork:
    """What an operator has to do, independent of hardware."""

    flops: float
    min_bytes: float  # HBM bytes it must read and write at least (each tensor once)
    reread_bytes: float  # bytes a tiled kernel re-reads when L2 misses (weights; K,V), once per so many `rows`
    parallel_units: float  # independent work items (attention: sequences x q heads), for occupancy
    rows: float = 0.0  # the M size that drives efficiency ramps and re-reads (GEMM: tokens; prefill attn: seq len)


def check_op(op: str, phase: str) -> None:
    if op not in OPS:
        raise ValueError(f"op must be one of {list(OPS)}, got {op!r}")
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {list(PHASES)}, got {phase!r}")


def _gemm(rows: float, k: int, n: int, b: int) -> tuple[float, float, float]:
    """[rows, k] x [k, n] -> (flops, min_bytes, weight_bytes)."""
    weights = k * n * b
    return 2.0 * rows * k * n, weights + rows * (k + n) * b, weights


def op_work(
    model: ModelSpec | TPShard,
    op: str,
    phase: str,
    num_tokens: int,
    context_tokens: int = 0,
    num_seqs: int = 1,
    tp: int = 1,
) -> OpWork:
    """FLOPs and minimum bytes of `op` for one layer on one GPU of a `tp`-way group (see the module table
    for the arguments; a `TPShard` may be given instead of the model and `tp`)."""
    check_op(op, phase)
    s = model if isinstance(model, TPShard) else model.shard(tp)
    m = s.model
    if num_tokens < 0 or context_tokens < 0 or num_seqs < 1:
        raise ValueError(
            f"num_tokens and context_tokens must be >= 0 and num_seqs >= 1, got "
            f"num_tokens={num_tokens}, context_tokens={context_tokens}, num_seqs={num_seqs}"
        )
    b, t = m.bytes_per_param, float(num_tokens)
    h, inter = m.hidden_size, s.intermediate_size
    if t == 0:
        return OpWork(0.0, 0.0, 0.0, 0.0, 0.0)
    if op == "qkv":
        f, by, w = _gemm(t, h, s.qkv_out_dim, b)
        return OpWork(f, by, w, t, t)
    if op == "o_proj":
        f, by, w = _gemm(t, s.q_dim, h, b)
        return OpWork(f, by, w, t, t)
    if op == "ffn":
        f1, by1, w1 = _gemm(t, h, 2 * inter, b)  # fused gate and up
        f2, by2, w2 = _gemm(t, inter, h, b)  # down
        act_bytes = t * 3 * inter * b  # SiLU(gate) * up: read 2I, write I
        return OpWork(f1 + f2 + 4.0 * t * inter, by1 + by2 + act_bytes, w1 + w2, t, t)
    if op == "misc":
        # two (add + RMSNorm): read x and residual, write both; RoPE on q and k: read and write
        by = t * b * (2 * 4 * h + 2 * (s.q_dim + s.kv_dim)) + 2 * h * b
        return OpWork(t * (2 * 8 * h + 6 * (s.q_dim + s.kv_dim)), by, 0.0, t)
    if op == "sampling":
        f, by, w = _gemm(t, h, s.vocab_size, b)
        # fp32 logits: this GPU's part written; the gathered full vocabulary read by softmax and the sampler
        logits_bytes = t * (s.vocab_size + 2 * m.vocab_size) * 4
        return OpWork(f + 5.0 * t * m.vocab_size, by + logits_bytes, w, t, t)
    # attention
    kv_tok = s.kv_bytes_per_token_layer
    if phase == "prefill":
        seq_len = t / num_seqs
        prefix = context_tokens / num_seqs
        # per sequence: QK^T and PV over (prefix + causal half of the new block), 2 GEMMs x 2 FLOPs
        pairs = num_seqs * (seq_len * prefix + seq_len * seq_len / 2.0)
        flops = 4.0 * s.q_dim * pairs
        kv_read = (t + context_tokens) * kv_tok
        by = t * 2 * s.q_dim * b + kv_read + t * kv_tok  # q, o; read K,V; write new K,V
        # K,V of a prompt are re-read by every 128-row query block that misses them in L2 (FlashAttention)
        return OpWork(flops, by, kv_read, num_seqs * s.q_heads * max(1.0, seq_len / 128.0), seq_len)
    # decode: every sequence attends over its whole context, one query row each
    flops = 4.0 * s.q_dim * context_tokens
    by = context_tokens * kv_tok + t * 2 * s.q_dim * b + t * kv_tok
    return OpWork(flops, by, 0.0, t * s.q_heads)


@dataclass(frozen=True)
class CommMessages:
    """The collectives of one model step of a TP group (none at TP 1), in bytes per message."""

    allreduce_count: int  # all-reduces of the hidden states: 2 per layer (after O and after down) + 1 embedding
    allreduce_bytes: float  # each: rows x hidden_size x dtype
    allgather_bytes: float  # the logits, once per step: logit rows x full vocabulary x dtype (gathered total)


def comm_messages(model: ModelSpec | TPShard, num_tokens: int, logit_rows: int, tp: int = 1) -> CommMessages:
    """Collectives of one forward step over `num_tokens` rows with `logit_rows` rows sampled.

    SGLang's Llama: the row-parallel O and down projections each end in an all-reduce of [rows, hidden],
    the vocab-parallel embedding in one more, and the LM head's logits are all-gathered.
    """
    s = model if isinstance(model, TPShard) else model.shard(tp)
    if num_tokens < 0 or logit_rows < 0:
        raise ValueError(f"num_tokens and logit_rows must be >= 0, got {num_tokens}, {logit_rows}")
    if s.tp == 1 or num_tokens == 0:
        return CommMessages(0, 0.0, 0.0)
    m = s.model
    return CommMessages(
        2 * m.num_layers + 1,
        float(num_tokens) * m.hidden_size * m.bytes_per_param,
        float(logit_rows) * m.vocab_size * m.bytes_per_param,
    )

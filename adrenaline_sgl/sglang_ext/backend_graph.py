"""Decode CUDA graphs with offload: the checks and the replay metadata of the `adrenaline` backend.

The way we go is SGLang's breakable decode graph (`--cuda-graph-backend-decode breakable`): the graph is
captured in segments separated by `@eager_on_graph` calls that run in Python on every replay. Per layer the
backend makes two such breaks (backend.py, `_send` and `_receive`), and everything between them, the wrapped
backend's decode attention over the whole padded graph batch, stays captured:

    [captured: ... QKV projection]  eager: submit the offloaded rows' q, k, v      (returns at once)
    [captured: local attention over all bs rows]   eager: wait, scatter o into the offloaded rows
    [captured: O projection, FFN, next layer's QKV ...]

Offloaded rows cost the captured attention nothing: the replay metadata (`padded_like_view`) gives them what
SGLang gives padded rows, `req_to_token` row 0 and the wrapped backend's fill sequence length, so the kernel
reads one token of padding; the rows it computes are overwritten by break 2. The one write it makes for them
is the new token's k, v at their `out_cache_loc` entry, the padding slot (or a slot the request owns and
never reads): harmless.

`--cuda-graph-backend-decode full` records one graph per batch size with no Python in it, so the remote call
cannot be in it: `refuse_unless_breakable` stops capture with the flags that work.
"""

from __future__ import annotations

import copy

import torch

BREAKABLE, DISABLED = "breakable", "disabled"  # sglang.srt.model_executor.cuda_graph_config.Backend values

FULL_GRAPH_REFUSED = (
    "adrenaline attention backend: the {what} decode CUDA graph cannot contain the per-layer remote call of "
    "offloaded rows; start the decode instance with --cuda-graph-backend-decode breakable (the remote call "
    "runs eagerly between captured segments) or --cuda-graph-backend-decode disabled (see docs/sglang.md)"
)
GLUE_GRAPH_REFUSED = (
    "adrenaline attention backend: SGLANG_ENABLE_METADATA_GLUE_GRAPH replays the per-step metadata prep from a "
    "graph, which would skip the per-step offload split and reuse a past step's offloaded rows; unset it"
)


def published_decode_graph_backend() -> str | None:
    """This process's `--cuda-graph-backend-decode` (full | breakable | disabled), None before SGLang publishes
    its config (unit tests, early start-up)."""
    from sglang.srt.runtime_context import get_exec

    try:
        cfg = get_exec().graph.cuda_graph_config
    except ValueError:  # "config namespace 'exec' not published"
        return None
    return None if cfg is None else cfg.decode.backend


def refuse_unless_breakable(in_breakable_graph: bool | None = None) -> None:
    """Raise RuntimeError unless a decode graph built now can keep the remote call eager.

    `in_breakable_graph`: at capture, whether SGLang's breakable capture is active (`is_in_breakable_cuda_graph`);
    None at `init_cuda_graph_state`, where only the published config can tell.
    """
    from sglang.srt.environ import envs

    if envs.SGLANG_ENABLE_METADATA_GLUE_GRAPH.get():
        raise RuntimeError(GLUE_GRAPH_REFUSED)
    if in_breakable_graph is None:
        backend = published_decode_graph_backend()
        if backend is not None and backend != BREAKABLE:
            raise RuntimeError(FULL_GRAPH_REFUSED.format(what=f"{backend!r}"))
    elif not in_breakable_graph:
        raise RuntimeError(FULL_GRAPH_REFUSED.format(what="non-breakable ('full')"))


def padded_like_view(forward_batch, rows: torch.Tensor, seq_len_fill: int):
    """A shallow copy of the graph batch `forward_batch` (`bs` rows, a ForwardBatch or the runner's replay view)
    whose `rows` `[N]` look like padding to the wrapped backend's metadata: `req_pool_indices` 0 and sequence
    length `seq_len_fill`, as SGLang's graph buffers pad (`cuda_graph_buffer_registry`). The batch's own
    tensors are left alone: they are the graph's static inputs."""
    view = copy.copy(forward_batch)
    view.req_pool_indices = forward_batch.req_pool_indices.clone()
    view.req_pool_indices[rows.to(view.req_pool_indices.device)] = 0
    view.seq_lens = forward_batch.seq_lens.clone()
    view.seq_lens[rows.to(view.seq_lens.device)] = seq_len_fill
    lens_cpu = getattr(forward_batch, "seq_lens_cpu", None)
    if lens_cpu is not None:
        view.seq_lens_cpu = lens_cpu.clone()
        view.seq_lens_cpu[rows] = seq_len_fill
    if getattr(forward_batch, "seq_lens_sum", None) is not None:
        lens = lens_cpu if lens_cpu is not None else forward_batch.seq_lens
        removed = int(lens[rows.to(lens.device)].sum())
        view.seq_lens_sum = forward_batch.seq_lens_sum - removed + seq_len_fill * int(rows.numel())
    return view


def real_batch_size(forward_batch) -> int:
    """Rows of a graph batch that are requests: the runner's replay view pads `num_padding` rows at the end."""
    return forward_batch.batch_size - int(getattr(forward_batch, "num_padding", 0) or 0)

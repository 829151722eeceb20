"""The `adrenaline` attention backend: wraps the configured backend and sends offloaded rows' attention away.

Per decode step (`init_forward_metadata`): split the batch into local rows and per-executor groups
(`DecodeOffload.split`), build the wrapped backend's metadata for the local rows only (a sub-ForwardBatch),
and open the step on every executor (`begin_step`, off the per-layer path).

Per layer (`forward_decode`), Adrenaline's overlap (technique 1b, 1c in ../shared/design/adrenaline.md):
    1. submit q, k, v of each group's rows to its executor      (one message, returns at once)
    2. local attention of the other rows in the wrapped backend  (writes only THEIR new k, v locally)
    3. wait for each executor's (o, lse) and scatter o into the output rows
The new token's k, v of an offloaded row never reaches the local pool: the wrapped backend sees a
sub-batch without that row, and the executor appends it to the request's KV on the prefill side. No merge
is needed: an offloaded request's whole KV lives on the executor (lse is returned for the split case).

A failing executor (timeout, refused, gone) takes out only its own rows: they get zeros, are marked failed
in `DecodeOffload`, and the scheduler hook (`decode_hooks.run_batch_hook`) aborts those requests with the
executor's error (HTTP 503); every other row of the batch decodes on. Nothing waits past the timeout.

CUDA graphs: SGLang's breakable decode graph (`--cuda-graph-backend-decode breakable`). Steps 1 and 3 are
eager graph breaks (`@eager_on_graph`: `_send`, `_receive`) that read the step's rows and clients when they
run; step 2 is the wrapped backend's attention over the whole padded graph batch, captured, with offloaded
rows given padding metadata by `init_forward_metadata_out_graph` (eager, once per step before replay, where
the split and `begin_step` happen). The full graph backend is refused. Details: backend_graph.py.

Extend/prefill batches and decode steps without offloaded rows go to the wrapped backend unchanged (in a
graph, between the two breaks of each layer, which then return at once).
"""

from __future__ import annotations

import copy
import logging

import torch
from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
from sglang.srt.model_executor.runner_backend_utils.breakable_cuda_graph import (
    eager_on_graph,
    is_in_breakable_cuda_graph,
)

from adrenaline_sgl.offload.decode_state import DecodeOffload, RowSplit
from adrenaline_sgl.offload.errors import NotConnectedError, OffloadError
from adrenaline_sgl.sglang_ext.backend_graph import padded_like_view, real_batch_size, refuse_unless_breakable

logger = logging.getLogger(__name__)

BACKEND_NAME = "adrenaline"

# ForwardBatch fields indexed by batch row in a decode step (one token per request), sliced for local rows.
PER_ROW_FIELDS = (
    "input_ids", "req_pool_indices", "seq_lens", "seq_lens_cpu", "orig_seq_lens", "out_cache_loc",
    "origin_out_cache_loc", "out_cache_loc_virtual", "positions", "encoder_lens", "encoder_lens_cpu",
)  # fmt: skip


def sub_batch(forward_batch, rows: torch.Tensor):
    """A shallow copy of a decode `forward_batch` restricted to batch positions `rows` `[M]`."""
    bs = forward_batch.batch_size
    sub = copy.copy(forward_batch)
    for name in PER_ROW_FIELDS:
        value = getattr(forward_batch, name, None)
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == bs:
            setattr(sub, name, value[rows.to(value.device)])
    sub.batch_size = int(rows.numel())
    lens = sub.seq_lens_cpu if getattr(sub, "seq_lens_cpu", None) is not None else sub.seq_lens
    sub.seq_lens_sum = int(lens.sum().item()) if sub.batch_size else 0
    return sub


class AdrenalineAttnBackend(AttentionBackend):
    """Wraps `inner` (the configured backend); decode rows marked in `offload` are computed remotely."""

    def __init__(self, inner: AttentionBackend, offload: DecodeOffload):
        super().__init__()
        self.inner = inner
        self.offload = offload
        self.attn_backend_list = [inner]
        self.kv_index_translator = getattr(inner, "kv_index_translator", None)
        self._split: RowSplit | None = None
        self._local_batch = None
        self._live: list = []  # (group, client) of this step's executors that are still answering
        self._dead: list[torch.Tensor] = []  # batch rows of executors that failed during this step
        self._pool_rows: list[int] = []  # req_to_token row of each batch position

    # ---- per step ----
    def _new_step(self) -> None:
        self._split, self._local_batch, self._live, self._dead = None, None, [], []

    def init_forward_metadata(self, forward_batch):
        """Eager steps: the wrapped backend plans the local rows only (a sub-batch)."""
        self._new_step()
        if forward_batch.forward_mode.is_decode():
            split = self.offload.split(forward_batch.req_pool_indices)
            if split.num_offloaded:
                self._local_batch = sub_batch(forward_batch, split.local_rows)
                if split.local_rows.numel():
                    self.inner.init_forward_metadata(self._local_batch)
                self._pool_rows = forward_batch.req_pool_indices.tolist()
                self._split = split
                self._begin_step(split)
                return
        self.inner.init_forward_metadata(forward_batch)

    def _begin_step(self, split: RowSplit) -> None:
        """Open the step on each executor; a failing one takes only its own rows out (see `_fail`)."""
        for group in split.groups:
            client = None
            try:
                client = self._open_step(group)
            except OffloadError as err:
                self._fail(group, client, err, opened=False)
                continue
            self._live.append((group, client))

    def _open_step(self, group):
        """`begin_step` on the group's executor (connecting on first use); an executor that no longer knows
        this client (it restarted: `NotConnectedError`) gets one fresh connection (new buffers, registered
        again) and the step is tried once more, so decode follows a restarted executor without a restart of
        its own (issue 18 defect 5). Requests the old executor held fail there as unknown, as they must."""
        client = self.offload.client(group.executor)
        try:
            client.begin_step(group.rids)
        except NotConnectedError as err:
            logger.warning("adrenaline: executor %s does not know this decode's connection (%s): reconnecting",
                           group.executor, err)  # fmt: skip
            client = self.offload.reconnect(group.executor)
            client.begin_step(group.rids)
        return client

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False):
        """Graph steps (eager, before each capture and replay): the wrapped backend plans the whole padded graph
        batch, offloaded rows planned as padding; the split and `begin_step` as in `init_forward_metadata`."""
        self._new_step()
        if not forward_batch.forward_mode.is_decode():
            return self.inner.init_forward_metadata_out_graph(forward_batch, in_capture)
        if in_capture:  # the capture batch is a dummy: nothing offloaded, but the breaks get recorded
            refuse_unless_breakable(is_in_breakable_cuda_graph())
            return self.inner.init_forward_metadata_out_graph(forward_batch, in_capture)
        num_real = real_batch_size(forward_batch)
        split = self.offload.split(forward_batch.req_pool_indices[:num_real])
        if not split.num_offloaded:
            return self.inner.init_forward_metadata_out_graph(forward_batch)
        remote = torch.cat([*(g.rows for g in split.groups), split.dead_rows])  # [N] batch positions
        fill = self.inner.get_cuda_graph_seq_len_fill_value()
        self.inner.init_forward_metadata_out_graph(padded_like_view(forward_batch, remote, fill))
        self._pool_rows = forward_batch.req_pool_indices[:num_real].tolist()
        self._split = split
        self._begin_step(split)

    def init_forward_metadata_in_graph(self, forward_batch):
        return self.inner.init_forward_metadata_in_graph(forward_batch)

    def _fail(self, group, client, err: OffloadError, opened: bool = True) -> None:
        """Changes nothing for the other rows: this group's requests get zeros now, are marked failed (the
        scheduler hook aborts them with this message) and never go to that executor again."""
        if opened and client is not None:
            try:
                client.abort_step()
            except OffloadError:
                pass  # the executor is gone; its step dies with it
        message = f"adrenaline executor {group.executor} failed: {err}"
        logger.error("%s; aborting %d request(s): %s", message, len(group.rids), ", ".join(group.rids))
        self.offload.fail([self._pool_rows[i] for i in group.rows.tolist()], message)
        self.offload.drop_client(group.executor)  # a later request reconnects (the executor may be back)
        self._live = [(g, c) for g, c in self._live if g is not group]
        self._dead.append(group.rows)

    # ---- per layer ----
    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        if is_in_breakable_cuda_graph():  # warm-up and capture; replay runs the captured segments and the breaks
            self._send(q, k, v, layer)  # eager break
            out = self.inner.forward_decode(q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache, **kwargs)
            self._receive(out, layer)  # eager break
            return out
        split = self._split
        if split is None:
            return self.inner.forward_decode(q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache, **kwargs)
        self._send(q, k, v, layer)  # 1. one message per executor, returns at once
        # 2. local attention meanwhile; only local rows' new k, v are written to the local pool
        num_heads, head_dim, v_dim = layer.tp_q_head_num, layer.qk_head_dim, layer.v_head_dim
        q3 = q.reshape(-1, num_heads, head_dim)  # [B, Hq, D]
        out = q.new_empty(q3.shape[0], num_heads * v_dim)  # [B, Hq * Dv]
        if split.local_rows.numel():
            rows = split.local_rows
            k3 = k.reshape(q3.shape[0], layer.tp_k_head_num, head_dim)  # [B, Hkv, D]
            v3 = v.reshape(q3.shape[0], layer.tp_v_head_num, v_dim)  # [B, Hkv, Dv]
            out[rows] = self.inner.forward_decode(q3[rows].reshape(rows.numel(), -1), k3[rows], v3[rows], layer,
                                                  self._local_batch, save_kv_cache=save_kv_cache, **kwargs)
        self._receive(out, layer)  # 3. wait and scatter
        return out

    # NOTE: in a breakable graph these two run on every replay with their capture-time arguments (the graph's
    # static q, k, v and output buffers, the same layer); the step's rows and clients are read from `self`.
    @eager_on_graph
    def _send(self, q, k, v, layer) -> None:
        """Submit the offloaded rows of q `[B, Hq * D]`, k, v `[B, Hkv, D]` to their executors."""
        if self._split is None:
            return
        q3 = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)  # [B, Hq, D]
        k3 = k.reshape(q3.shape[0], layer.tp_k_head_num, layer.qk_head_dim)  # [B, Hkv, D]
        v3 = v.reshape(q3.shape[0], layer.tp_v_head_num, layer.v_head_dim)  # [B, Hkv, Dv]
        for group, client in list(self._live):
            try:
                client.submit(layer.layer_id, q3[group.rows], k3[group.rows], v3[group.rows])
            except OffloadError as err:
                self._fail(group, client, err)

    @eager_on_graph
    def _receive(self, out, layer) -> None:
        """Wait for each executor's (o, lse) and write o into its rows of out `[B, Hq * Dv]` (in place)."""
        split = self._split
        if split is None:
            return
        out3 = out.view(-1, layer.tp_q_head_num, layer.v_head_dim)  # [B, Hq, Dv]
        for group, client in list(self._live):
            try:
                o, _lse = client.wait()  # o [N, Hq, Dv], lse [N, Hq] (whole KV remote: nothing to merge)
            except OffloadError as err:
                self._fail(group, client, err)
                continue
            out3[group.rows] = o.to(out3.dtype)
        for rows in (split.dead_rows, *self._dead):  # failed executors' rows: aborted by the scheduler
            out3[rows] = 0

    # ---- everything else is the wrapped backend's ----
    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        return self.inner.forward_extend(q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache, **kwargs)

    def forward_mixed(self, q, k, v, layer, forward_batch, save_kv_cache=True):
        return self.inner.forward_mixed(q, k, v, layer, forward_batch, save_kv_cache=save_kv_cache)

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int):
        """Decode graphs: only SGLang's breakable graph can keep the remote call eager (backend_graph.py)."""
        refuse_unless_breakable()
        self.inner.init_cuda_graph_state(max_bs, max_num_tokens)

    def get_cuda_graph_seq_len_fill_value(self):
        return self.inner.get_cuda_graph_seq_len_fill_value()

    def on_after_cuda_graph_warmup(self):
        return self.inner.on_after_cuda_graph_warmup()

    def shared_read_ends(self, fm):
        return self.inner.shared_read_ends(fm)

    def support_triton(self):
        return self.inner.support_triton()

    def __getattr__(self, name):  # attributes the wrapped backend has and AttentionBackend does not declare
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


# ---- registration and creation (SGLang's attention registry calls `create_backend(model_runner)`) ----
def register() -> None:
    """Add `adrenaline` to SGLang's attention backends and to the --attention-backend choices.

    Changes: `ATTENTION_BACKENDS["adrenaline"]` and the CLI choice lists. Why: SGLang resolves
    `--attention-backend` / `--decode-attention-backend` by name through this registry.
    """
    from sglang.srt.arg_groups.choices import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    ATTENTION_BACKENDS.setdefault(BACKEND_NAME, create_backend)
    if BACKEND_NAME not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([BACKEND_NAME])


def create_backend(model_runner):
    """SGLang's factory signature; reads this instance's `--adrenaline-*` settings from the published args."""
    from sglang.srt.runtime_context import get_server_args

    from adrenaline_sgl.sglang_ext import flags

    return build_backend(model_runner, flags.of(get_server_args()))


def build_backend(model_runner, args) -> AdrenalineAttnBackend:
    """The wrapped backend named by `args.inner_attention_backend`, around this process's `DecodeOffload`."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    from adrenaline_sgl.offload import decode_state

    if args.inner_attention_backend not in ATTENTION_BACKENDS:
        raise ValueError(f"adrenaline inner_attention_backend={args.inner_attention_backend!r}: expected one of "
                         f"{sorted(n for n in ATTENTION_BACKENDS if n != BACKEND_NAME)}")  # fmt: skip
    inner = ATTENTION_BACKENDS[args.inner_attention_backend](model_runner)
    offload = decode_state.current()
    if offload is None:
        offload = DecodeOffload(connect=client_factory(model_runner, args), send_release=release_sender(args),
                                send_renew=renew_sender(args))  # fmt: skip
        decode_state.install(offload)
    return AdrenalineAttnBackend(inner, offload)


RELEASE_TIMEOUT_S = 2.0  # one retried release call (off the scheduler thread)


def release_sender(args):
    """`send(executor, rid) -> (ok, why)`: a release over the executor's control socket, without a channel
    (`DecodeOffload` retries the releases of requests whose executor failed with it)."""
    from adrenaline_sgl.offload import control

    def send(executor: str, rid: str) -> tuple[bool, object]:
        if args.transport == "inproc":
            return False, "transport inproc has no control socket"
        return control.call(executor, "release", {"rid": rid}, timeout_s=RELEASE_TIMEOUT_S)

    return send


RENEW_TIMEOUT_S = 1.0  # one lease renewal call (off the scheduler thread; the next comes LEASE_RENEW_S later)


def renew_sender(args):
    """`send(executor, rids) -> (ok, result)`: renews the KV leases of requests this decode still has, over the
    executor's control socket (prefill frees the KV of requests nobody renews: `offload.lease`)."""
    from adrenaline_sgl.offload import control

    def send(executor: str, rids: list[str]) -> tuple[bool, object]:
        if args.transport == "inproc":
            return False, "transport inproc has no control socket"
        return control.call(executor, "renew", {"rids": rids}, timeout_s=RENEW_TIMEOUT_S)

    return send


MIN_CONNECT_TIMEOUT_S = 5.0  # a connect also registers the peer's buffers on the executor


def connect_timeout_s(args) -> float:
    """Seconds decode waits for an executor to accept a connection: the layer timeout, at least 5 s."""
    return max(args.remote_timeout_s, MIN_CONNECT_TIMEOUT_S)


def max_offload_rows(model_runner) -> int:
    """Rows one decode step can send to one executor: the instance's request slots (`req_to_token` rows), at
    most what an executor accepts (`router.MAX_ROWS`)."""
    from adrenaline_sgl.offload.transports.router import MAX_ROWS

    pool = getattr(model_runner, "req_to_token_pool", None)
    if pool is None:
        raise ValueError("adrenaline backend: the model runner has no req_to_token_pool to size offload buffers")
    return min(MAX_ROWS, max(1, int(pool.size)))


def client_factory(model_runner, args):
    """`connect(executor_addr) -> OffloadClient` over `args.transport`, rows shaped like this model (TP 1)."""
    from adrenaline_sgl.offload.client import ClientConfig, OffloadClient
    from adrenaline_sgl.offload.transports.base import create_channel
    from adrenaline_sgl.offload.wire import RowLayout

    cfg = model_runner.model_config
    layout = RowLayout(num_q_heads=cfg.num_attention_heads, num_kv_heads=cfg.get_num_kv_heads(1),
                       head_dim=cfg.head_dim, dtype=model_runner.kv_cache_dtype)  # fmt: skip
    num_layers = cfg.num_hidden_layers
    client_cfg = ClientConfig(layer_timeout_s=args.remote_timeout_s)

    def connect(executor: str) -> OffloadClient:
        if args.transport == "inproc":
            raise OffloadError(f"transport inproc cannot reach executor {executor!r} from a server; use mooncake")
        try:
            # NOTE: a connect runs on the decode scheduler's thread and blocks the whole batch while it waits;
            # bounded like a layer (the transports' default is 30 s), so a dead executor costs seconds.
            # Every running request of this instance may go to one executor in one step: buffers for all of
            # them (the transports' default, 256 rows, failed the offloaded rows of larger decode batches).
            channel = create_channel(args.transport, address=executor, layout=layout,
                                     max_rows=max_offload_rows(model_runner),
                                     connect_timeout_s=connect_timeout_s(args))  # fmt: skip
        except OffloadError:
            raise
        except Exception as err:  # a transport that fails to connect still fails as an offload error
            raise OffloadError(f"connecting to executor {executor}: {err}") from err
        return OffloadClient(channel, layout, num_layers, client_cfg)

    return connect

"""The `adrenaline` backend in SGLang's breakable decode CUDA graph equals eager decode and the unwrapped backend.

CPU machines cannot capture CUDA graphs, so `GraphRunner` drives the backend through exactly the calls SGLang's
`DecodeCudaGraphRunner` makes (`init_cuda_graph_state`; `init_forward_metadata_out_graph(in_capture=True)`,
warm-up and capture of the forward under `enable_breakable_cuda_graph`; per replay: static buffers padded as
the buffer registry pads them, SGLang's own `build_replay_fb_view`, `init_forward_metadata_out_graph`, then
`BreakableCUDAGraph.replay`'s order: segment, break, segment, break, ...). During capture a `FakeCapture`
stands where `BreakableCUDAGraphCapture` stands (`_current_capture_var`), so `@eager_on_graph` records the
backend's real break functions; at replay those recorded functions run, with their capture-time arguments,
and each captured segment (the wrapped backend's decode attention over the padded batch) is re-run on the
graph's static buffers with the metadata object built at capture, which is what a graph replay executes.
The wrapped backend is SGLang's `TritonAttnBackend` in the Triton interpreter; offloaded rows go over the
`inproc` transport to an `AttentionExecutor`. The GPU test at the end captures a real breakable graph.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import pytest
import torch

from adrenaline_sgl.offload.client import ClientConfig, OffloadClient
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.offload.service import ExecutorService
from adrenaline_sgl.offload.transports.inproc import InprocChannel
from adrenaline_sgl.offload.wire import RowLayout

sgl_pool = pytest.importorskip("sglang.srt.mem_cache.memory_pool")
from sglang.srt.layers.radix_attention import RadixAttention  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode  # noqa: E402
from sglang.srt.model_executor.runner.decode_cuda_graph_runner import build_replay_fb_view  # noqa: E402
from sglang.srt.model_executor.runner_backend_utils.breakable_cuda_graph import (  # noqa: E402
    breakable_cuda_graph as bcg,
)
from sglang.srt.model_executor.runner_backend_utils.breakable_cuda_graph import (  # noqa: E402
    enable_breakable_cuda_graph,
)

from adrenaline_sgl.offload.decode_state import DecodeOffload  # noqa: E402
from adrenaline_sgl.sglang_ext.backend import AdrenalineAttnBackend  # noqa: E402

HQ, HKV, D, LAYERS, SLOTS, CAPTURE_BS = 4, 2, 8, 2, 128, 4
PROMPT_LENS = [5, 9, 3, 7, 6, 4]  # tokens already in KV per request; request r uses req_to_token row r + 1
OFFLOADED = {1, 3, 4}
# requests per replayed step (4, 2, 3 rows; CAPTURE_BS pads the last two): offloaded rows {1, 3}, {0}, none
STEPS = ([0, 1, 2, 3], [4, 5], [0, 2, 5])
TOL = {"atol": 1e-4, "rtol": 1e-4}  # test_backend.py's tolerance for the Triton interpreter


@contextmanager
def context(extra_args: tuple[str, ...] = ("--cuda-graph-backend-decode", "breakable"), device: str = "cpu",
            tmp_dir=None):  # fmt: skip
    """A published SGLang runtime context (tiny Llama, triton attention with 2 KV splits, which keeps the
    interpreter quick, and the given decode graph backend)."""
    import tempfile

    from sglang.srt.runtime_context import create_context, use_context
    from sglang.srt.server_args import prepare_server_args
    from transformers import LlamaConfig

    with tempfile.TemporaryDirectory(dir=tmp_dir) as model_dir:
        LlamaConfig(hidden_size=HQ * D, intermediate_size=64, num_attention_heads=HQ, num_key_value_heads=HKV,
                    num_hidden_layers=LAYERS, vocab_size=128, max_position_embeddings=64,
                    architectures=["LlamaForCausalLM"]).save_pretrained(model_dir)  # fmt: skip
        server_args = prepare_server_args(["--model-path", model_dir, "--device", device, "--attention-backend",
                                           "triton", "--triton-attention-num-kv-splits", "2", *extra_args])  # fmt: skip
        ctx = create_context(server_args, role="scheduler")
        with use_context(ctx):
            from sglang.srt.configs.model_config import ModelConfig

            yield ModelConfig.from_server_args(server_args)


def triton_backend(model_config, req_to_token, pool, device: str):
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend
    from sglang.srt.mem_cache.kv_index_translator import KVIndexTranslator

    translator = KVIndexTranslator(req_to_token=req_to_token.req_to_token, token_to_kv_pool_allocator=None,
                                   token_to_kv_pool=pool, page_size=1, device=device)  # fmt: skip
    runner = types.SimpleNamespace(
        device=device, req_to_token_pool=req_to_token, token_to_kv_pool=pool, sliding_window_size=None,
        token_to_kv_pool_allocator=None, page_size=1, kv_index_translator=translator, model_config=model_config,
        decode_num_tokens_per_req=lambda: 1, is_draft_worker=False, gpu_id=0, kv_cache_dtype=torch.float32,
    )
    return TritonAttnBackend(runner)


class World:
    """Decode instance pools and backends for PROMPT_LENS, plus an executor holding the offloaded requests' KV.

    `reference`: the unwrapped backend over `ref_pool` (every request's KV); `wrapped`: the adrenaline backend
    over `pool`, which holds ZEROS where offloaded requests' KV would be (so equal outputs prove the remote
    path ran). Both share `req_to_token` (the same slot numbers in both pools)."""

    def __init__(self, model_config, device: str = "cpu", seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.device = device
        self.layers = [RadixAttention(num_heads=HQ, head_dim=D, scaling=D**-0.5, num_kv_heads=HKV, layer_id=i)
                       for i in range(LAYERS)]  # fmt: skip
        self.ref_pool, self.pool = self._pool(), self._pool()
        self.req_to_token = sgl_pool.ReqToTokenPool(8, 64, device, False)
        self.next_slot = 1  # slot 0 is SGLang's padding slot
        self.lens = list(PROMPT_LENS)
        executor = AttentionExecutor(KVPool.standalone(LAYERS, SLOTS, HKV, D, device=device), attention="reference")
        self.service = ExecutorService(executor)
        self.channel = InprocChannel(self.service)
        self.client = OffloadClient(self.channel, RowLayout(HQ, HKV, D, torch.float32), LAYERS,
                                    ClientConfig(layer_timeout_s=5.0))  # fmt: skip
        self.submitted: list[tuple[int, int]] = []  # (layer, rows) of every submit, in order
        submit = self.client.submit
        self.client.submit = lambda layer, q, k, v: (self.submitted.append((layer, q.shape[0])), submit(layer, q, k, v))
        self.offload = DecodeOffload(connect=lambda addr: self.client)
        for r, n in enumerate(PROMPT_LENS):
            slots = self._alloc(r)
            for _ in range(n - 1):
                slots = torch.cat([slots, self._alloc(r)])
            k = torch.randn(LAYERS, n, HKV, D, generator=g).to(device)
            v = torch.randn(LAYERS, n, HKV, D, generator=g).to(device)
            for i in range(LAYERS):
                self.ref_pool.k_buffer[i][slots] = k[i]
                self.ref_pool.v_buffer[i][slots] = v[i]
                if r not in OFFLOADED:  # an offloaded request's prompt KV never reaches decode
                    self.pool.k_buffer[i][slots] = k[i]
                    self.pool.v_buffer[i][slots] = v[i]
            if r in OFFLOADED:
                self.client.adopt_copy(f"r{r}", k, v)
                self.offload.mark(r + 1, f"r{r}", "inproc")
        self.reference = triton_backend(model_config, self.req_to_token, self.ref_pool, device)
        self.wrapped = AdrenalineAttnBackend(triton_backend(model_config, self.req_to_token, self.pool, device),
                                             self.offload)  # fmt: skip

    def _pool(self):
        return sgl_pool.MHATokenToKVPool(SLOTS, page_size=1, dtype=torch.float32, head_num=HKV, head_dim=D,
                                         layer_num=LAYERS, device=self.device, enable_memory_saver=False)  # fmt: skip

    def _alloc(self, r: int) -> torch.Tensor:
        """One new token slot `[1]` for request r, recorded in its req_to_token row."""
        start = int((self.req_to_token.req_to_token[r + 1] > 0).sum())
        self.req_to_token.req_to_token[r + 1, start] = self.next_slot
        self.next_slot += 1
        return torch.tensor([self.next_slot - 1], device=self.device)

    def batch(self, reqs: list[int]) -> tuple[ForwardBatch, ForwardBatch]:
        """The step's decode batches (one new token per request): for the reference, and for the wrapped
        backend, whose offloaded rows have no local slot (`out_cache_loc` 0, the padding slot)."""
        slots = torch.cat([self._alloc(r) for r in reqs])
        for r in reqs:
            self.lens[r] += 1
        lens = torch.tensor([self.lens[r] for r in reqs])

        def fb(out_cache_loc):
            return ForwardBatch(forward_mode=ForwardMode.DECODE, batch_size=len(reqs),
                                input_ids=torch.zeros(len(reqs), dtype=torch.int64, device=self.device),
                                req_pool_indices=torch.tensor([r + 1 for r in reqs], device=self.device),
                                seq_lens=lens.to(self.device), out_cache_loc=out_cache_loc,
                                seq_lens_sum=int(lens.sum()), seq_lens_cpu=lens)  # fmt: skip

        local = torch.tensor([r not in OFFLOADED for r in reqs], device=self.device)
        return fb(slots), fb(torch.where(local, slots, torch.zeros_like(slots)))

    def close(self):
        self.channel.close()


class FakeCapture:
    """Stands where SGLang's `BreakableCUDAGraphCapture` stands during capture (`bcg._current_capture_var`):
    keeps the break functions `eager_on_graph` records and counts the graph segments."""

    def __init__(self):
        self.cuda_graph = types.SimpleNamespace(_break_fns=[])
        self._barrier_fn = None
        self.segments = 1  # entering the capture opens the first segment

    def _end_current_segment(self):
        pass

    def _begin_new_segment(self):
        self.segments += 1


class GraphRunner:
    """One captured decode graph (`bs` rows) of `backend`, driven as SGLang's decode graph runner drives it."""

    def __init__(self, backend, layers, bs: int, device: str):
        self.backend, self.layers, self.bs = backend, layers, bs
        self.captured_attention = getattr(backend, "inner", backend).forward_decode  # what the segments run
        backend.init_cuda_graph_state(bs, bs)
        self.fill = backend.get_cuda_graph_seq_len_fill_value()
        # static input buffers (names as in DecodeInputBuffers, read by build_replay_fb_view)
        self.input_ids = torch.zeros(bs, dtype=torch.int64, device=device)
        self.positions = torch.zeros(bs, dtype=torch.int64, device=device)
        self.req_pool_indices = torch.zeros(bs, dtype=torch.int64, device=device)
        self.seq_lens = torch.full((bs,), self.fill, dtype=torch.int64, device=device)
        self.seq_lens_cpu = torch.full((bs,), self.fill, dtype=torch.int64)
        self.out_cache_loc = torch.zeros(bs, dtype=torch.int64, device=device)
        self.encoder_lens = self.mamba_track_indices = None
        self.q = torch.zeros(LAYERS, bs, HQ * D, device=device)  # [L, bs, Hq * D]: what each segment feeds attention
        self.k = torch.zeros(LAYERS, bs, HKV, D, device=device)  # [L, bs, Hkv, D]
        self.v = torch.zeros(LAYERS, bs, HKV, D, device=device)
        self.static_batch = ForwardBatch(forward_mode=ForwardMode.DECODE, batch_size=bs, input_ids=self.input_ids,
                                         req_pool_indices=self.req_pool_indices, seq_lens=self.seq_lens,
                                         out_cache_loc=self.out_cache_loc, seq_lens_sum=bs * self.fill,
                                         seq_lens_cpu=self.seq_lens_cpu, positions=self.positions)  # fmt: skip

    def forward(self) -> list[torch.Tensor]:
        return [self.backend.forward(self.q[i], self.k[i], self.v[i], layer, self.static_batch)
                for i, layer in enumerate(self.layers)]  # fmt: skip

    def capture(self) -> FakeCapture:
        capture = FakeCapture()
        with enable_breakable_cuda_graph():  # what capture_session / replay_session enter
            self.backend.init_forward_metadata_out_graph(self.static_batch, in_capture=True)
            self.forward()  # warm-up (BreakableCudaGraphBackend.capture_one runs two)
            token = bcg._current_capture_var.set(capture)
            try:
                self.backend.init_forward_metadata_in_graph(self.static_batch)
                self.outs = self.forward()  # the graph's output buffers, one per layer
            finally:
                bcg._current_capture_var.reset(token)
        self.breaks = capture.cuda_graph._break_fns
        return capture

    def load(self, fb: ForwardBatch) -> None:
        """`load_batch` before a replay of the step `fb` (<= bs rows): the static buffers padded as the buffer
        registry pads them, then the backend's out-of-graph metadata on SGLang's replay view."""
        raw = fb.batch_size
        for name, pad in (("req_pool_indices", 0), ("seq_lens", self.fill), ("seq_lens_cpu", self.fill),
                          ("out_cache_loc", 0)):  # fmt: skip
            getattr(self, name)[:raw] = getattr(fb, name)
            getattr(self, name)[raw:] = pad
        view = build_replay_fb_view(forward_batch=fb, buffers=self, bs=self.bs, raw_bs=raw, num_tokens=self.bs,
                                    global_num_tokens_cpu=None, seq_len_fill_value=self.fill,
                                    capture_forward_mode=ForwardMode.DECODE, is_encoder_decoder=False)  # fmt: skip
        self.backend.init_forward_metadata_out_graph(view)

    def replay(self, fb: ForwardBatch, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One step of `fb.batch_size` <= bs rows; q `[L, B, Hq * D]`, k, v `[L, B, Hkv, D]` the layers' inputs.
        Returns the attention outputs `[L, B, Hq * D]`."""
        raw = fb.batch_size
        with enable_breakable_cuda_graph():
            self.load(fb)
            breaks = iter(self.breaks)
            for i, layer in enumerate(self.layers):  # BreakableCUDAGraph.replay: segment, break, segment, ...
                self.q[i, :raw], self.k[i, :raw], self.v[i, :raw] = q[i], k[i], v[i]  # segment: projections
                if self.breaks:
                    next(breaks)()  # eager: submit
                self.outs[i].copy_(self.captured_attention(self.q[i], self.k[i], self.v[i], layer,
                                                           self.static_batch))  # segment: attention  # fmt: skip
                if self.breaks:
                    next(breaks)()  # eager: wait and scatter
        return torch.stack([out[:raw] for out in self.outs])


def inputs(n: int, g: torch.Generator, device: str):
    q = torch.randn(LAYERS, n, HQ * D, generator=g).to(device)  # [L, B, Hq * D]
    k = torch.randn(LAYERS, n, HKV, D, generator=g).to(device)  # [L, B, Hkv, D]
    v = torch.randn(LAYERS, n, HKV, D, generator=g).to(device)
    return q, k, v


def eager(backend, layers, fb, q, k, v) -> torch.Tensor:
    backend.init_forward_metadata(fb)
    return torch.stack([backend.forward(q[i], k[i], v[i], layer, fb) for i, layer in enumerate(layers)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-interpreter variant (GPUs: test_real_breakable...)")
def test_graph_replays_equal_eager_and_unwrapped_for_changing_offloaded_rows(tmp_path):
    with context(tmp_dir=tmp_path) as model_config:
        graph, plain = World(model_config), World(model_config)  # same KV: graph runs vs eager runs
        try:
            ref_runner = GraphRunner(graph.reference, graph.layers, CAPTURE_BS, "cpu")
            runner = GraphRunner(graph.wrapped, graph.layers, CAPTURE_BS, "cpu")
            assert not ref_runner.capture().cuda_graph._break_fns
            capture = runner.capture()
            # two eager breaks per layer, each ending a segment: 2 * LAYERS + 1 captured segments
            assert len(runner.breaks) == 2 * LAYERS and capture.segments == 2 * LAYERS + 1
            assert graph.submitted == []  # nothing was offloaded while capturing
            g = torch.Generator().manual_seed(1)
            for reqs in STEPS:
                q, k, v = inputs(len(reqs), g, "cpu")
                ref_fb, fb = graph.batch(reqs)
                graph.submitted.clear()
                out = runner.replay(fb, q, k, v)
                ref = ref_runner.replay(ref_fb, q, k, v)
                plain_ref_fb, plain_fb = plain.batch(reqs)
                eager_out = eager(plain.wrapped, plain.layers, plain_fb, q, k, v)
                eager_ref = eager(plain.reference, plain.layers, plain_ref_fb, q, k, v)
                num_off = sum(r in OFFLOADED for r in reqs)
                # the recorded breaks sent THIS step's offloaded rows, not the capture's or the last step's
                assert graph.submitted == ([(i, num_off) for i in range(LAYERS)] if num_off else [])
                torch.testing.assert_close(out, ref, **TOL)
                torch.testing.assert_close(out, eager_out, **TOL)
                torch.testing.assert_close(ref, eager_ref, **TOL)  # the emulated graph ran real attention
                if not num_off:  # no offloaded row: exactly the wrapped backend's own graph path
                    assert torch.equal(out, ref)
                # the captured attention read offloaded rows as padding: 1 token (the fill), like padded rows
                kv_lens = torch.diff(graph.wrapped.inner.kv_indptr[: CAPTURE_BS + 1]).tolist()
                want = [1 if r in OFFLOADED else graph.lens[r] for r in reqs] + [1] * (CAPTURE_BS - len(reqs))
                assert kv_lens == want
                for b, r in enumerate(reqs):  # local rows' new k, v in the local pool; offloaded rows' not
                    slot = ref_fb.out_cache_loc[b]
                    written = graph.pool.k_buffer[LAYERS - 1][slot]
                    if r in OFFLOADED:
                        assert torch.count_nonzero(written) == 0
                    else:
                        torch.testing.assert_close(written, k[LAYERS - 1, b])
            held = graph.service.executor.stats().tokens_held  # the executor appended one token per step
            assert held == plain.service.executor.stats().tokens_held == sum(graph.lens[r] for r in OFFLOADED)
        finally:
            graph.close()
            plain.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-interpreter variant")
def test_a_failing_executor_in_a_replay_takes_out_only_its_rows(tmp_path):
    from adrenaline_sgl.offload.errors import OffloadError

    with context(tmp_dir=tmp_path) as model_config:
        world = World(model_config)
        try:
            ref_runner = GraphRunner(world.reference, world.layers, CAPTURE_BS, "cpu")
            runner = GraphRunner(world.wrapped, world.layers, CAPTURE_BS, "cpu")
            ref_runner.capture()
            runner.capture()

            def refuse(layer, q, k, v):
                raise OffloadError("executor at inproc, layer 0: gone")

            world.client.submit = refuse
            reqs = [0, 1, 2]
            q, k, v = inputs(len(reqs), torch.Generator().manual_seed(1), "cpu")
            ref_fb, fb = world.batch(reqs)
            out = runner.replay(fb, q, k, v)
            ref = ref_runner.replay(ref_fb, q, k, v)
            torch.testing.assert_close(out[:, [0, 2]], ref[:, [0, 2]], **TOL)  # the other rows decode on
            assert torch.count_nonzero(out[:, 1]) == 0  # the failed row gets zeros, in every layer
            assert list(world.offload.failed()) == [2] and "gone" in world.offload.failed()[2]
        finally:
            world.close()


def test_padded_like_view_plans_rows_as_padding_and_leaves_the_static_batch_alone():
    from adrenaline_sgl.sglang_ext.backend_graph import padded_like_view, real_batch_size

    fb = ForwardBatch(forward_mode=ForwardMode.DECODE, batch_size=4, input_ids=torch.zeros(4, dtype=torch.int64),
                      req_pool_indices=torch.tensor([3, 5, 6, 0]), seq_lens=torch.tensor([7, 9, 4, 1]),
                      out_cache_loc=torch.tensor([11, 0, 12, 0]), seq_lens_sum=21,
                      seq_lens_cpu=torch.tensor([7, 9, 4, 1]))  # fmt: skip
    view = padded_like_view(fb, torch.tensor([1]), seq_len_fill=1)
    assert view.req_pool_indices.tolist() == [3, 0, 6, 0] and view.seq_lens.tolist() == [7, 1, 4, 1]
    assert view.seq_lens_cpu.tolist() == [7, 1, 4, 1] and view.seq_lens_sum == 13
    assert view.out_cache_loc is fb.out_cache_loc  # the KV write target stays the graph's buffer
    assert fb.req_pool_indices.tolist() == [3, 5, 6, 0] and fb.seq_lens.tolist() == [7, 9, 4, 1]
    assert real_batch_size(fb) == 4 and real_batch_size(types.SimpleNamespace(batch_size=4, num_padding=1)) == 3


def test_full_decode_graph_is_refused_naming_breakable_and_disabled(tmp_path):
    with context(("--cuda-graph-backend-decode", "full"), tmp_dir=tmp_path) as model_config:
        world = World(model_config)
        try:
            with pytest.raises(RuntimeError, match="'full' decode CUDA graph cannot contain") as err:
                world.wrapped.init_cuda_graph_state(CAPTURE_BS, CAPTURE_BS)
            assert "--cuda-graph-backend-decode breakable" in str(err.value)
            assert "--cuda-graph-backend-decode disabled" in str(err.value)
            # a decode capture outside SGLang's breakable graph (the config is not consulted): refused too
            _, fb = world.batch([0])
            with pytest.raises(RuntimeError, match="non-breakable .* --cuda-graph-backend-decode breakable"):
                world.wrapped.init_forward_metadata_out_graph(fb, in_capture=True)
        finally:
            world.close()


def test_metadata_glue_graph_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLANG_ENABLE_METADATA_GLUE_GRAPH", "1")
    with context(tmp_dir=tmp_path) as model_config:
        world = World(model_config)
        try:
            with pytest.raises(RuntimeError, match="SGLANG_ENABLE_METADATA_GLUE_GRAPH"):
                world.wrapped.init_cuda_graph_state(CAPTURE_BS, CAPTURE_BS)
        finally:
            world.close()


@pytest.mark.gpu
def test_real_breakable_graph_with_offloaded_rows_equals_eager(tmp_path):
    """A real BreakableCUDAGraph of the wrapped backend (native Triton), replayed for the same STEPS. Written on a
    CPU machine and not yet run: a session with a GPU runs it (`pytest -m gpu tests/sglang_ext`)."""
    pytest.importorskip("sgl_kernel", reason="breakable capture weak-refs the break arguments with sgl_kernel")
    from sglang.srt.model_executor.runner_backend_utils.breakable_cuda_graph import (
        BreakableCUDAGraph,
        BreakableCUDAGraphCapture,
    )

    tol = {"atol": 1e-3, "rtol": 1e-3}  # native Triton: graph and eager batches may pick different KV splits
    with context(device="cuda", tmp_dir=tmp_path) as model_config:
        graph, plain = World(model_config, "cuda"), World(model_config, "cuda")
        try:
            runner = GraphRunner(graph.wrapped, graph.layers, CAPTURE_BS, "cuda")

            def body():  # `* 1.0`: the attention inputs come out of a captured op, as from the QKV projection
                return [graph.wrapped.forward(runner.q[i] * 1.0, runner.k[i] * 1.0, runner.v[i] * 1.0, layer,
                                              runner.static_batch) for i, layer in enumerate(graph.layers)]  # fmt: skip

            cuda_graph, stream = BreakableCUDAGraph(), torch.cuda.Stream()
            with enable_breakable_cuda_graph():
                graph.wrapped.init_forward_metadata_out_graph(runner.static_batch, in_capture=True)
                for _ in range(2):  # warm-up, as BreakableCudaGraphBackend.capture_one
                    body()
                torch.cuda.synchronize()
                with BreakableCUDAGraphCapture(cuda_graph=cuda_graph, pool=torch.cuda.graph_pool_handle(),
                                               stream=stream):  # fmt: skip
                    graph.wrapped.init_forward_metadata_in_graph(runner.static_batch)
                    outs = body()
            assert len(cuda_graph._break_fns) == 2 * LAYERS
            g = torch.Generator().manual_seed(1)
            for reqs in STEPS:
                q, k, v = inputs(len(reqs), g, "cuda")
                _, fb = graph.batch(reqs)
                with enable_breakable_cuda_graph():
                    runner.load(fb)
                    runner.q[:, : len(reqs)], runner.k[:, : len(reqs)], runner.v[:, : len(reqs)] = q, k, v
                    cuda_graph.replay()
                torch.cuda.synchronize()
                out = torch.stack([o[: len(reqs)] for o in outs])
                plain_ref_fb, plain_fb = plain.batch(reqs)
                torch.testing.assert_close(out, eager(plain.wrapped, plain.layers, plain_fb, q, k, v), **tol)
                torch.testing.assert_close(out, eager(plain.reference, plain.layers, plain_ref_fb, q, k, v), **tol)
        finally:
            graph.close()
            plain.close()

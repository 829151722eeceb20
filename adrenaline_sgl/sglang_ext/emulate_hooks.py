"""Emulated-GPU mode inside SGLang: the real control plane, a timed stand-in for every forward.

Registered by the plugin only when `$ADRENALINE_EMULATE` is set (the launcher's `emulate:` block,
adrenaline_sgl/emulate/config.py). What stays real and what is modelled, op by op: docs/emulator.md.

Hooks (AROUND; inert unless the process was started with `$ADRENALINE_EMULATE`):
- `ModelRunner.forward`: no model compute. The attention backend's per-step metadata is built as usual (the
  `adrenaline` backend splits the batch and opens the step on its executors, for real); the step's time
  comes from the cost model (`emulate/timing.py`) and is queued on the emulated GPU (`emulate/clock.py`).
- `ModelRunner.sample`: deterministic token ids (`emulate/tokens.py`); SGLang's sampler never runs.
- `TpModelWorker.forward_batch_generation`: carries the batch's requests to `sample`, the timing to the result.
- `Scheduler._copy_result_to_cpu`: the result's `copy_done` event is ready when the emulated GPU finishes the
  step, so SGLang's own overlap scheduling waits and polls as it does on a GPU.
- `Scheduler.process_batch_result`: waits for the emulated step (the non-overlap path), SGLang processes it,
  one trace row per step (timing, batch, KV pool, queues, the scheduler thread's CPU time).
- `MooncakeKVManager.send_kvcache`: SGLang's real transfer of the stand-in's tiny KV, then the link stays
  busy for the emulated KV's time (`kv_transfer_ms`).

Per process: one `EmulatedGPU` (its scheduler's), one `Link` (its prefill -> decode transfers). The prefill
instance publishes its running batch (`emulate/busy.py`) so decode can slow remote attention while that
GPU is busy prefilling (the simulator's contention rule, or its time-sharing under `executor_colocation:
timeshare`).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import torch

from adrenaline_sgl.emulate import busy as busy_state
from adrenaline_sgl.emulate import tokens
from adrenaline_sgl.emulate.clock import EmulatedDone, EmulatedGPU, Link
from adrenaline_sgl.emulate.config import EmulateConfig, from_env
from adrenaline_sgl.emulate.timing import RemoteRows, StepModel
from adrenaline_sgl.emulate.trace import StepRecord, StepTrace

logger = logging.getLogger(__name__)

FORWARD = "sglang.srt.model_executor.model_runner.ModelRunner.forward"
SAMPLE = "sglang.srt.model_executor.model_runner.ModelRunner.sample"
WORKER_FORWARD = "sglang.srt.managers.tp_worker.TpModelWorker.forward_batch_generation"
COPY_RESULT = "sglang.srt.managers.scheduler.Scheduler._copy_result_to_cpu"
PROCESS_RESULT = "sglang.srt.managers.scheduler.Scheduler.process_batch_result"
SEND_KV = "sglang.srt.disaggregation.mooncake.conn.MooncakeKVManager.send_kvcache"

_EMU_ATTR = "_adrenaline_emulated_step"  # on a GenerationBatchResult: the step's _Step


class _Step:
    """One emulated forward: what ran and when the emulated GPU finishes it."""

    __slots__ = ("kind", "batch", "new_tokens", "context_tokens", "offloaded", "model_ms", "launch", "start", "done",
                 "decode_time")

    def __init__(self, kind, batch, new_tokens, context_tokens, offloaded, model_ms, launch, start, done,
                 decode_time=None):
        self.kind, self.batch, self.new_tokens, self.context_tokens = kind, batch, new_tokens, context_tokens
        self.offloaded, self.model_ms, self.launch, self.start, self.done = offloaded, model_ms, launch, start, done
        self.decode_time = decode_time  # a decode step's parts (timing.DecodeTime), None otherwise


class Emulator:
    """Per-process state: the config, the step model, the emulated GPU and link, the trace."""

    def __init__(self, cfg: EmulateConfig):
        self.cfg = cfg
        self.model = StepModel(cfg)
        self.gpu = EmulatedGPU(cfg.clock_scale)
        self.link = Link(cfg.clock_scale)
        self.role: str | None = None  # prefill | decode | null, set when the scheduler first runs
        self.prefill_sm_share = 1.0
        self.busy_writer: busy_state.BusyWriter | None = None
        self.trace: StepTrace | None = None
        self.batch = None  # the ScheduleBatch whose forward runs now (sample reads its requests)
        self.step: _Step | None = None  # the forward that just ran (the worker hook attaches it)
        self._last_done = 0.0
        self._cpu_mark = None
        self._lock = threading.Lock()

    def bind_scheduler(self, scheduler) -> None:
        """Learn the role from the first scheduler call: prefill on an Adrenaline instance runs on the share of
        its device the executor leaves (`StepModel.prefill_sm_share`: all of it when they time-share); it
        publishes its busy state for decode's contention model."""
        if self.role is not None:
            return
        from adrenaline_sgl.sglang_ext import flags

        args = flags.of(scheduler.server_args)
        mode = str(getattr(scheduler.disaggregation_mode, "value", scheduler.disaggregation_mode))
        self.role = mode
        if mode == "prefill" and args.role == "prefill":
            self.prefill_sm_share = self.model.prefill_sm_share(hosts_executor=True)
        if self.cfg.trace_dir:
            os.makedirs(self.cfg.trace_dir, exist_ok=True)
            self.trace = StepTrace(os.path.join(self.cfg.trace_dir, f"emulate-{mode}-{os.getpid()}.csv"))
            if mode == "prefill" and args.role == "prefill":
                self.busy_writer = busy_state.BusyWriter(busy_state.path(self.cfg.trace_dir, args.executor_port))
        device = self.cfg.prefill_gpu if mode == "prefill" and self.cfg.prefill_gpu else self.cfg.gpu
        logger.info("adrenaline emulate: %s emulates %s on %s (clock x%g, prefill SM share %.2f, executor %s), "
                    "KV pool %s tokens", mode, self.cfg.model, device, self.cfg.clock_scale, self.prefill_sm_share,
                    self.cfg.executor_colocation,
                    getattr(scheduler, "max_total_num_tokens", "?"))  # fmt: skip

    # ---- the forward ----
    def forward(self, runner, forward_batch) -> _Step:
        """Time one forward and queue it on the emulated GPU."""
        launch = time.monotonic()
        mode = forward_batch.forward_mode
        if mode.is_idle() or forward_batch.batch_size == 0:
            return self._queue("idle", 0, 0, 0, 0, 0.0, launch)
        runner.attn_backend.init_forward_metadata(forward_batch)  # as the eager runner does (real work)
        if mode.is_decode():
            seq = _lens(forward_batch)
            split = getattr(runner.attn_backend, "_split", None)  # the adrenaline backend's rows of this step
            remote, local_rows = [], list(range(len(seq)))
            if split is not None and split.num_offloaded:
                local_rows = split.local_rows.tolist()
                for g in split.groups:
                    rows = g.rows.tolist()
                    remote.append(RemoteRows(len(rows), sum(seq[i] for i in rows),
                                             busy_state.busy_bytes_per_s(self.cfg.trace_dir, g.executor, launch)))
            local_ctx = sum(seq[i] for i in local_rows)
            t = self.model.decode(len(local_rows), local_ctx, remote)
            return self._queue("decode", len(seq), len(seq), sum(seq), sum(r.rows for r in remote), t.ms, launch, t)
        new = list(forward_batch.extend_seq_lens_cpu or [])
        t = self.model.prefill(new, self.prefill_sm_share)
        step = self._queue("prefill", len(new), sum(new), int(sum(_lens(forward_batch))), 0, t.ms, launch)
        if self.busy_writer is not None:
            self.busy_writer.publish(step.start, step.done, t.bytes_per_s)
        return step

    def _queue(self, kind, batch, new_tokens, context_tokens, offloaded, model_ms, launch, decode_time=None) -> _Step:
        start, done = self.gpu.submit(model_ms)
        self.step = _Step(kind, batch, new_tokens, context_tokens, offloaded, model_ms, launch, start, done,
                          decode_time)
        return self.step

    def sample(self, forward_batch) -> torch.Tensor:
        """One token per request of the running batch (decode: per row; extend: per request)."""
        reqs = getattr(self.batch, "reqs", None) or []
        seq = _lens(forward_batch)
        ids = []
        for i, n in enumerate(seq):
            req = reqs[i] if i < len(reqs) else None
            ids.append(_token_for(req, n, self.vocab_size, self.eos_id))
        device = forward_batch.seq_lens.device if forward_batch.seq_lens is not None else "cpu"
        return torch.tensor(ids, dtype=torch.int64, device=device)

    vocab_size = 32000
    eos_id: int | None = None

    # ---- after the step ----
    def finish(self, scheduler, step: _Step) -> None:
        """Wait for the emulated GPU (a no-op when SGLang already waited on `copy_done`)."""
        self.gpu.wait_until(step.done)

    def record(self, scheduler, step: _Step) -> None:
        if self.trace is None:
            return
        cpu = time.thread_time()
        cpu_ms = 0.0 if self._cpu_mark is None else (cpu - self._cpu_mark) * 1e3
        self._cpu_mark = cpu
        idle_ms = max(0.0, step.start - self._last_done) * 1e3 if self._last_done else 0.0
        self._last_done = step.done
        self.trace.add(record_of(scheduler, step, time.monotonic(), idle_ms, cpu_ms))


def _lens(forward_batch) -> list[int]:
    lens = forward_batch.seq_lens_cpu if getattr(forward_batch, "seq_lens_cpu", None) is not None else None
    if lens is None:
        lens = forward_batch.seq_lens.cpu()
    return [int(x) for x in lens.tolist()]


def _token_for(req, seq_len: int, vocab_size: int, eos_id: int | None) -> int:
    """The token a forward over `seq_len` tokens of `req` produces (output token seq_len - prompt + 1)."""
    if req is None:
        return tokens.token_id(0, max(1, seq_len), vocab_size)
    index = max(1, seq_len - len(req.origin_input_ids) + 1)
    key = tokens.request_key(req.rid, getattr(req, "bootstrap_room", None))
    params = req.sampling_params
    custom = getattr(params, "custom_params", None)
    stop_at = None if getattr(params, "ignore_eos", False) else tokens.stop_at_of(custom)
    return tokens.next_token(key, index, vocab_size, eos_id, stop_at)


def record_of(scheduler, step, processed_s: float, idle_ms: float, cpu_ms: float) -> StepRecord:
    """Read SGLang's scheduler state (pools and queues) after it processed `step`."""
    total = int(getattr(scheduler, "max_total_num_tokens", 0) or 0)
    available = int(scheduler.token_to_kv_pool_allocator.available_size())
    tree = getattr(scheduler, "tree_cache", None)
    evictable = int(tree.evictable_size()) if tree is not None and hasattr(tree, "evictable_size") else 0
    running = getattr(scheduler, "running_batch", None)
    exec_tokens, reserve, reserve_free = _executor(scheduler)
    parts = step.decode_time
    return StepRecord(
        step.kind, step.batch, step.new_tokens, step.context_tokens, step.offloaded, round(step.model_ms, 4),
        step.launch, step.start, step.done, processed_s, round(idle_ms, 4), round(cpu_ms, 4),
        total, available, evictable, total - available - evictable,
        _len(getattr(scheduler, "waiting_queue", None)), _len(getattr(running, "reqs", None)),
        _len(getattr(getattr(scheduler, "disagg_prefill_bootstrap_queue", None), "queue", None)),
        _len(getattr(scheduler, "disagg_prefill_inflight_queue", None)),
        _len(getattr(getattr(scheduler, "disagg_decode_prealloc_queue", None), "queue", None)),
        _len(getattr(getattr(scheduler, "disagg_decode_transfer_queue", None), "queue", None)),
        exec_tokens, reserve, reserve_free,
        *((round(parts.nonattn_ms, 4), round(parts.local_attn_ms, 4), round(parts.remote_ms, 4),
           round(parts.roundtrip_ms, 4)) if parts is not None else (0.0, 0.0, 0.0, 0.0)),
    )  # fmt: skip


def _executor(scheduler) -> tuple[int, int, int]:
    """(KV tokens the Adrenaline executor holds, its decode-token reserve, the reserve's free slots) on an
    Adrenaline prefill instance; zeros elsewhere. The reserve is carved out of SGLang's pool once, so
    `kv_used` counts all of it; the slots really in use are `kv_used - exec_reserve_free`."""
    from adrenaline_sgl.sglang_ext.prefill_hooks import STORE_ATTR

    kept = getattr(scheduler, STORE_ATTR, None)
    executor = getattr(kept, "executor", None)
    if executor is None:
        return 0, 0, 0
    stats = executor.stats()
    return int(stats.tokens_held), int(kept.reserved_tokens), int(stats.slots_free)


def _len(x) -> int:
    try:
        return len(x) if x is not None else 0
    except TypeError:
        return 0


_EMULATOR: Emulator | None = None


def current() -> Emulator | None:
    """This process's emulator (created on first use from `$ADRENALINE_EMULATE`), or None."""
    global _EMULATOR
    if _EMULATOR is None:
        cfg = from_env()
        if cfg is not None:
            _EMULATOR = Emulator(cfg)
    return _EMULATOR


# ---- hooks (AROUND: hook(original, self, *args, **kwargs)) ----

def forward_hook(original, self, forward_batch, *args, **kwargs):
    """Changes: no model compute; the step is timed by the cost model and queued on the emulated GPU."""
    from sglang.srt.layers.logits_processor import LogitsProcessorOutput

    emu = current()
    if emu is None:
        return original(self, forward_batch, *args, **kwargs)
    if emu.eos_id is None:
        emu.vocab_size = int(self.model_config.vocab_size)
        eos = getattr(self.model_config.hf_config, "eos_token_id", None)
        emu.eos_id = int(eos[0] if isinstance(eos, list | tuple) else eos) if eos is not None else -1
    self.forward_pass_id += 1
    emu.forward(self, forward_batch)
    return _runner_output(LogitsProcessorOutput(next_token_logits=None))


def _runner_output(logits_output):
    from sglang.srt.model_executor.model_runner import ModelRunnerOutput

    return ModelRunnerOutput(logits_output=logits_output, can_run_graph=False)


def sample_hook(original, self, logits_output, forward_batch):
    """Changes: deterministic token ids (emulate/tokens.py); SGLang's sampler never sees logits."""
    emu = current()
    if emu is None:
        return original(self, logits_output, forward_batch)
    return emu.sample(forward_batch)


def worker_forward_hook(original, self, batch=None, *args, **kwargs):
    """Changes: the batch's requests reach `sample`; the step's timing rides on the result."""
    emu = current()
    if emu is None:
        return original(self, batch, *args, **kwargs)
    emu.batch, emu.step = batch, None
    try:
        result = original(self, batch, *args, **kwargs)
    finally:
        emu.batch = None
    if emu.step is not None and result is not None:
        setattr(result, _EMU_ATTR, emu.step)
    return result


def copy_result_hook(original, self, batch_result, batch):
    """Changes: `copy_done` is ready when the emulated GPU finishes the step (overlap scheduling)."""
    out = original(self, batch_result, batch)
    step = getattr(batch_result, _EMU_ATTR, None)
    emu = current()
    if step is not None and emu is not None:
        batch_result.copy_done = EmulatedDone(emu.gpu, step.done)
    return out


def process_result_hook(original, self, batch, result):
    """Changes: SGLang processes a step's result only once the emulated GPU has finished it; a trace row."""
    emu = current()
    step = getattr(result, _EMU_ATTR, None) if emu is not None else None
    if step is None:
        return original(self, batch, result)
    emu.bind_scheduler(self)
    emu.finish(self, step)
    out = original(self, batch, result)
    emu.record(self, step)
    return out


def send_kv_hook(original, self, mooncake_session_id, prefill_kv_indices, *args, **kwargs):
    """Changes: after SGLang's real (tiny) transfer, the link stays busy for the emulated KV's time."""
    emu = current()
    t0 = time.monotonic()
    out = original(self, mooncake_session_id, prefill_kv_indices, *args, **kwargs)
    if emu is not None and prefill_kv_indices is not None and len(prefill_kv_indices):
        page = int(getattr(self.kv_args, "page_size", 1) or 1)
        emu.link.transfer(emu.model.kv_transfer_ms(len(prefill_kv_indices) * page), time.monotonic() - t0)
    return out


def hooks(HookType) -> list[tuple[str, object, object]]:
    """(target, hook, HookType) of the emulated-GPU mode; empty unless `$ADRENALINE_EMULATE` is set."""
    if from_env() is None:
        return []
    return [
        (FORWARD, forward_hook, HookType.AROUND),
        (SAMPLE, sample_hook, HookType.AROUND),
        (WORKER_FORWARD, worker_forward_hook, HookType.AROUND),
        (COPY_RESULT, copy_result_hook, HookType.AROUND),
        (PROCESS_RESULT, process_result_hook, HookType.AROUND),
        (SEND_KV, send_kv_hook, HookType.AROUND),
    ]

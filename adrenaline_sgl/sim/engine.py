"""Discrete-event simulator of n prefill and m decode instances, with and without attention offloading.

One request's life, as SGLang 0.5.23's PD disaggregation runs it with its default
`--disaggregation-decode-allocation-policy early` (docs/simulator.md, "KV hand-off"):
  arrival -> proxy routes it and asks the scheduler to offload or not -> the decode instance's
  pre-allocation queue (FIFO; offloaded requests ahead of local ones, the plugin's order): a local request
  waits there until decode can allocate its prompt KV (`_admit_tokens`: SGLang's `pop_preallocated` rule), an
  offloaded one until decode has a request slot and its budget is not overdrawn -> only then does prefill
  see it (SGLang's prefill keeps it in its bootstrap queue until decode has sent the KV destination) ->
  prefill queue -> prefill batch (token budget; on
  adrenaline the prefill engine keeps 1 - executor_sm_share of the SMs) -> first token
  -> local:     its KV crosses the link into the slots decode allocated, prefill frees it, join the batch
     offloaded: KV stays on the prefill GPU, first token + metadata to decode, join the decode batch
  -> one token per decode step until the requested output length -> finish, free KV.
So when decode memory binds, requests queue before prefill (TTFT grows) and prefill holds no KV that
decode cannot take.

A decode step with M local and N offloaded rows (`_step_time`) costs
  nonattn(M + N) + max(local_attn(M), max_p [remote_attn_p(N_p) + L x roundtrip(N_p)])
i.e. the per-layer round trip hides under local attention when it can (paper, technique 1). Remote
attention runs with the executor's SM share and gets at most the HBM bandwidth a running prefill batch
leaves free (technique 2's interference). With `executor_colocation="timeshare"` (one CPU core hosts
prefill and the executor) both run at the whole core's speed, and remote attention takes twice as long
while a prefill batch runs (its fair half of the core); the prefill batch is not slowed (an approximation
that holds while prefill keeps the core busy a small share of the time). Every cost comes from `SimCosts`
(the scheduler's cost model) and every offload decision from `OffloadPolicy` (the scheduler's admission).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import asdict

from adrenaline_sgl.scheduler.admission import LiveStats, OffloadPolicy, RequestInfo

from .cluster import DecodeGPU, PrefillGPU
from .config import SimConfig, WorkloadConfig
from .costs import NO_WORK, SimCosts, Work
from .records import DECODE, EXECUTOR, PREFILL, MemSample, RequestRecord, SimResult, StepSample
from .workloads import Requests

ARRIVAL, PREFILL_DONE, TRANSFER_DONE, DECODE_READY, STEP_DONE = range(5)


class Simulator:
    """Runs one request stream through one cluster. `run()` once; the result holds raw records only."""

    def __init__(self, cluster: SimConfig, requests: Requests, costs: SimCosts, policy: OffloadPolicy):
        self.cfg, self.costs, self.policy = cluster, costs, policy
        cap = costs.info.kv_capacity_tokens
        prefill_cap = getattr(costs, "prefill_kv_capacity_tokens", cap)
        max_seq = int((requests.prompt_len + requests.output_len).max())
        self.watermark = cluster.decode_kv_admission == "watermark"
        headroom = 2 * cluster.decode_reserved_tokens if self.watermark else 0
        if max_seq + headroom > cap:
            raise ValueError(f"a request needs {max_seq + headroom} KV tokens but a GPU holds {cap}; "
                             "shorten max_context")
        exec_cap = max(0, prefill_cap - cluster.prefill_kv_reserve_tokens)
        self.prefill = [PrefillGPU(i, prefill_cap, exec_cap) for i in range(cluster.n_prefill)]
        self.decode = [DecodeGPU(i, cap, cluster.n_prefill) for i in range(cluster.n_decode)]
        self.timeshare = cluster.executor_colocation == "timeshare"
        self.reqs = [
            RequestRecord(i, float(a), int(p), int(o))
            for i, (a, p, o) in enumerate(zip(requests.arrival_s, requests.prompt_len, requests.output_len))
        ]
        partitioned = cluster.offload_enabled and not self.timeshare
        self.prefill_sm_share = 1.0 - cluster.executor_sm_share if partitioned else 1.0
        self.steps: list[StepSample] = []
        self.mem: list[MemSample] = []
        self._events: list = []
        self._seq = itertools.count()
        self._link_free_s = [[0.0] * cluster.n_decode for _ in range(cluster.n_prefill)]
        self._restoring: set[int] = set()  # retracted rids whose KV is on its way back from host memory
        for r in self.reqs:
            self._push(r.arrival_s, ARRIVAL, r.rid)

    # ---- the main loop ---------------------------------------------------------------------------------
    def run(self) -> SimResult:
        handlers = {
            ARRIVAL: self._on_arrival,
            PREFILL_DONE: self._on_prefill_done,
            TRANSFER_DONE: self._on_transfer_done,
            DECODE_READY: self._on_decode_ready,
            STEP_DONE: self._on_step_done,
        }
        while self._events:
            t, _, kind, arg = heapq.heappop(self._events)
            handlers[kind](t, arg)
        unfinished = sum(1 for r in self.reqs if math.isnan(r.finish_s))
        if unfinished:
            raise RuntimeError(f"simulation stalled with {unfinished} unfinished requests (a model bug)")
        return SimResult(self.reqs, self.steps, self.mem, self.costs.info, {"cluster": asdict(self.cfg)})

    def _push(self, t: float, kind: int, arg) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, arg))

    # ---- proxy -----------------------------------------------------------------------------------------
    def _on_arrival(self, t: float, rid: int) -> None:
        r = self.reqs[rid]
        p = min(self.prefill, key=lambda g: (g.queued_tokens + g.busy, g.idx))
        d = min(self.decode, key=lambda g: (g.batch + len(g.prealloc) + len(g.ready) + len(g.joining), g.idx))
        r.prefill_instance, r.decode_instance = p.idx, d.idx
        max_seq = r.prompt_len + r.output_len
        request = RequestInfo(r.prompt_len, r.output_len)
        if self.cfg.offload_enabled and self.policy.decide(request, self._stats(p, d)).offload:
            if max_seq <= p.exec_free_tokens:  # NOTE: a hard memory check even if the policy forgot it
                r.offloaded = True
                p.exec_reserved_tokens += max_seq
                self._sample_mem(t, p)
        d.prealloc.append(rid)  # decode admits it first; prefill sees it once decode has room
        self._try_prealloc(t, d)

    def _stats(self, p: PrefillGPU, d: DecodeGPU) -> LiveStats:
        """The scheduler's view at one arrival, for the chosen (prefill, decode) pair. The prefill capacity
        offered to offloaded requests is what p can still reserve plus what d's offloaded requests already
        hold (`LiveStats.prefill_offload_capacity_tokens`'s meaning)."""
        off_max = sum(g.max_tokens for g in d.remote)
        return LiveStats(
            local_requests=d.local.requests,
            local_tokens=d.local.context_tokens,
            offloaded_requests=d.offloaded_requests,
            offloaded_tokens=sum(g.context_tokens for g in d.remote),
            offloaded_max_tokens=off_max,
            decode_kv_capacity_tokens=self.costs.info.kv_capacity_tokens,
            prefill_offload_capacity_tokens=(off_max + max(p.exec_free_tokens, 0),),
        )

    # ---- prefill ---------------------------------------------------------------------------------------
    def _try_prefill(self, t: float, p: PrefillGPU) -> None:
        if p.busy or not p.queue:
            return
        batch, tokens = [], 0
        while p.queue:
            r = self.reqs[p.queue[0]]
            if batch and tokens + r.prompt_len > self.cfg.prefill_token_budget:
                break
            if not r.offloaded and r.prompt_len > p.free_tokens:
                break  # FCFS: wait for staging memory (freed when a transfer completes)
            p.queue.popleft()
            p.queued_tokens -= r.prompt_len
            if not r.offloaded:
                p.staging_tokens += r.prompt_len
            batch.append(r.rid)
            tokens += r.prompt_len
        if not batch:
            return
        work = self.costs.prefill([self.reqs[i].prompt_len for i in batch], self.prefill_sm_share)
        end = t + work.ms / 1e3
        p.busy, p.busy_bytes_per_s = True, work.bytes / max(work.ms / 1e3, 1e-12)
        for i in batch:
            self.reqs[i].prefill_start_s = t
        self.steps.append(StepSample(PREFILL, p.idx, t, end, work.flops, work.bytes, len(batch)))
        self._sample_mem(t, p)
        self._push(end, PREFILL_DONE, (p.idx, batch))

    def _on_prefill_done(self, t: float, arg) -> None:
        p_idx, batch = arg
        p = self.prefill[p_idx]
        p.busy, p.busy_bytes_per_s = False, 0.0
        for rid in batch:
            r = self.reqs[rid]
            r.prefill_end_s, r.tokens_out = t, 1
            d = self.decode[r.decode_instance]
            if r.offloaded:  # KV stays here; only the first token and metadata travel
                p.exec_used_tokens += r.prompt_len
                self._push(t + self.costs.offload_roundtrip_ms(1) / 1e3, DECODE_READY, rid)
            else:  # decode allocated its slots before prefill started: send the KV now
                link = self._link_free_s[p.idx]
                start = max(t, link[d.idx])
                link[d.idx] = start + self.costs.kv_transfer_ms(r.prompt_len) / 1e3
                self._push(link[d.idx], TRANSFER_DONE, rid)
        self._sample_mem(t, p)
        self._try_prefill(t, p)

    # ---- decode admission (SGLang's DecodePreallocQueue) and KV transfer ------------------------------
    def _allocatable_tokens(self, d: DecodeGPU, count_retracted: bool = True) -> int:
        """SGLang's `_allocatable_token_budgets`: free KV slots, minus the headroom of
        `decode_reserved_tokens` per local request holding KV here (or, if larger, what the longest running
        request could still need were all others retracted), minus what the retracted requests need back.
        The running step's new tokens are already allocated (SGLang allocates them before the forward)."""
        free = d.free_tokens - d.local.requests
        retractable = d.local.context_tokens
        longest = max((self.reqs[i].prompt_len + self.reqs[i].output_len for i in d.local_rids), default=0)
        single = longest - retractable if d.local_rids else 0
        reserve = self.cfg.decode_reserved_tokens
        retracted = sum(self._fill_len(self.reqs[i]) + reserve for i in d.retracted) if count_retracted else 0
        return free - max(reserve * d.local_active, single) - retracted

    @staticmethod
    def _fill_len(r: RequestRecord) -> int:
        """KV tokens decode allocates to admit r: its prompt, plus what it had decoded if it was retracted
        (the last token's KV is written when it runs again), as SGLang's `_pre_alloc_fill_len`."""
        return r.prompt_len + max(r.tokens_out - 1, 0)

    def _admit_tokens(self, d: DecodeGPU, r: RequestRecord) -> int | None:
        """KV tokens decode GPU d allocates to admit r now, None if r must wait (FIFO: those behind it too)."""
        if d.admitted >= self.cfg.max_decode_batch:
            return None  # no request slot (SGLang's req_to_token pool is sized to the running batch)
        if not self.watermark:  # reserve the maximum length: growth never needs more
            if r.offloaded:
                return 0
            need = r.prompt_len + r.output_len
            return need if need <= d.free_tokens else None
        reserve = self.cfg.decode_reserved_tokens
        budget = self._allocatable_tokens(d)
        if r.offloaded:  # no KV here at all (the plugin's admission-tokens hook): only a budget not overdrawn
            return 0 if budget >= 0 else None
        fill = self._fill_len(r)
        required = max(fill + reserve, r.prompt_len + r.output_len - d.local.context_tokens)
        return fill if required <= budget else None

    def _try_prealloc(self, t: float, d: DecodeGPU) -> None:
        """Restore retracted requests first (SGLang's `resume_retracted_reqs`), then admit the head of the
        pre-allocation queue while it fits (`pop_preallocated`); an admitted request reaches its prefill
        instance's queue (its bootstrap completes)."""
        admitted = False
        reserve = self.cfg.decode_reserved_tokens if self.watermark else 0
        while d.retracted and d.admitted < self.cfg.max_decode_batch:
            r = self.reqs[d.retracted[0]]
            fill = self._fill_len(r)
            if fill + reserve > self._allocatable_tokens(d, count_retracted=False):
                break
            d.retracted.popleft()
            d.reserved_tokens += fill
            d.local_active += 1
            self._push(t + self.costs.kv_restore_ms(fill + 1) / 1e3, TRANSFER_DONE, r.rid)
            admitted = True
        if self.cfg.offloaded_admission_first:  # the plugin's order: offloaded (no decode KV) first, then local
            offloaded = [self.reqs[rid].offloaded for rid in d.prealloc]
            if any(offloaded) and offloaded != sorted(offloaded, reverse=True):  # each group in arrival order
                d.prealloc = deque([rid for rid, off in zip(d.prealloc, offloaded) if off]
                                   + [rid for rid, off in zip(d.prealloc, offloaded) if not off])
        while d.prealloc:
            r = self.reqs[d.prealloc[0]]
            need = self._admit_tokens(d, r)
            if need is None:
                break  # FIFO: wait until finishing requests free memory or slots
            d.prealloc.popleft()
            r.decode_admit_s = t
            if r.offloaded:
                d.offloaded_admitted += 1
            else:
                d.reserved_tokens += need
                d.local_active += 1
            p = self.prefill[r.prefill_instance]
            p.queue.append(r.rid)
            p.queued_tokens += r.prompt_len
            self._try_prefill(t, p)
            admitted = True
        if admitted:
            self._sample_mem(t, d)

    def _on_transfer_done(self, t: float, rid: int) -> None:
        r = self.reqs[rid]
        p, d = self.prefill[r.prefill_instance], self.decode[r.decode_instance]
        d.used_tokens += self._fill_len(r)  # the last token's KV is written when it joins
        if rid in self._restoring:
            self._restoring.discard(rid)
            d.ready.append(rid)
            self._sample_mem(t, d)
            if not d.busy:
                self._start_step(t, d)
            return
        p.staging_tokens -= r.prompt_len
        self._sample_mem(t, p)
        self._sample_mem(t, d)
        self._on_decode_ready(t, rid)
        self._try_prefill(t, p)

    # ---- decode ----------------------------------------------------------------------------------------
    def _on_decode_ready(self, t: float, rid: int) -> None:
        """r's KV (or, offloaded, its first token and metadata) is on decode; the scheduler sees it at its next
        iteration (`_start_step`), at once when decode is idle."""
        d = self.decode[self.reqs[rid].decode_instance]
        d.ready.append(rid)
        if not d.busy:
            self._start_step(t, d)

    def _deliver(self, t: float, d: DecodeGPU) -> None:
        """One iteration of SGLang's decode scheduler at a step boundary (`event_loop_overlap_disagg_decode`):
        the requests whose KV arrived since the last one get their first token out
        (`process_batch_result_prebuilt`) and merge into the running batch. With the overlap scheduler the
        step it launches runs after the one in flight, so when a step is in flight (requests are running or
        joining) they join the step after this one; with nothing in flight they join now."""
        in_flight = self.cfg.decode_overlap_schedule and (d.batch > 0 or bool(d.joining))
        later = []
        while d.ready:
            rid = d.ready.popleft()
            r = self.reqs[rid]
            if math.isnan(r.first_token_s):  # a restored (retracted) request's first token was out long ago
                r.first_token_s = t
                if r.output_len <= 1:
                    self._finish(t, r, d, context=r.prompt_len + 1, joined=False)
                    continue
            later.append(rid)
        if in_flight:
            joining_now, d.joining = d.joining, deque(later)
        else:
            joining_now = deque([*d.joining, *later])
            d.joining = deque()
        d.ready = joining_now  # `_start_step` takes them into this step (the rest wait, in order)

    def _start_step(self, t: float, d: DecodeGPU) -> None:
        self._deliver(t, d)
        while d.ready and d.batch < self.cfg.max_decode_batch:
            r = self.reqs[d.ready.popleft()]
            max_seq = r.prompt_len + r.output_len
            if r.offloaded:
                d.remote[r.prefill_instance].add(r.prompt_len + 1, max_seq)
                self.prefill[r.prefill_instance].exec_used_tokens += 1
            else:
                d.local.add(r.prompt_len + r.tokens_out, max_seq)
                d.used_tokens += 1  # this step writes the KV of its last token
                if self.watermark:  # allocated on demand (admission allocated the prompt only)
                    d.reserved_tokens += 1
                d.local_rids[r.rid] = r.tokens_out
            d.schedule_finish(r.rid, r.output_len - r.tokens_out)
        if d.ready:  # no request slot left this step: they join the next one, ahead of the later ones
            d.joining = deque([*d.ready, *d.joining])
            d.ready = deque()
        if self.watermark:
            while d.local.requests and d.reserved_tokens + d.local.requests > d.capacity_tokens:
                self._retract(t, d)  # this step's tokens would not fit: retract the newest local request
        if d.batch == 0:
            d.busy = False
            if d.joining:  # retraction emptied the batch: nothing is in flight, the joining ones start now
                self._start_step(t, d)
            return
        d.busy = True
        step_ms = self._step_time(t, d)
        self._push(t + step_ms / 1e3, STEP_DONE, d.idx)

    def _step_time(self, t: float, d: DecodeGPU) -> float:
        """Record the step's samples and return its duration (ms). See the module docstring."""
        c = self.costs
        nonattn = c.decode_nonattn(d.batch)
        local = c.decode_attn(d.local.requests, d.local.context_tokens, 1.0) if d.local.requests else NO_WORK
        remote_ms, roundtrip_ms, offloaded = 0.0, 0.0, 0
        for p, g in zip(self.prefill, d.remote):
            if not g.requests:
                continue
            work = self._executor_attn(p, g.requests, g.context_tokens)
            rt = c.num_layers * c.offload_roundtrip_ms(g.requests)
            if work.ms + rt > remote_ms + roundtrip_ms:
                remote_ms, roundtrip_ms = work.ms, rt
            offloaded += g.requests
            self.steps.append(StepSample(EXECUTOR, p.idx, t, t + work.ms / 1e3, work.flops, work.bytes, g.requests,
                                         offloaded_rows=g.requests))
        attn_ms = max(local.ms, remote_ms + roundtrip_ms)
        exposed = min(roundtrip_ms, max(0.0, remote_ms + roundtrip_ms - local.ms))  # round trip not hidden
        hidden = roundtrip_ms - exposed
        step_ms = nonattn.ms + attn_ms
        mine = nonattn + local
        self.steps.append(StepSample(DECODE, d.idx, t, t + step_ms / 1e3, mine.flops, mine.bytes, d.batch,
                                     offloaded_rows=offloaded, hidden_roundtrip_ms=hidden,
                                     exposed_roundtrip_ms=exposed))
        return step_ms

    def _executor_attn(self, p: PrefillGPU, rows: int, context_tokens: int) -> Work:
        """Remote attention on prefill GPU p, slowed when a running prefill leaves too little HBM bandwidth
        (partition), or to half speed while a prefill batch runs (timeshare: one core, module doc)."""
        if self.timeshare:
            work = self.costs.executor_attn(rows, context_tokens, 1.0)
            return Work(work.ms * 2, work.flops, work.bytes) if p.busy else work
        work = self.costs.executor_attn(rows, context_tokens, self.cfg.executor_sm_share)
        if not p.busy or work.ms <= 0:
            return work
        spare = max(self.costs.info.peak_hbm_bytes_per_s - p.busy_bytes_per_s, 1e-3 * p.busy_bytes_per_s)
        needed_ms = work.bytes / spare * 1e3
        return Work(max(work.ms, needed_ms), work.flops, work.bytes)

    def _retract(self, t: float, d: DecodeGPU) -> None:
        """Take one local request out of the batch, SGLang's victim first (fewest output tokens, then the
        longest prompt: `_get_decode_retraction_order`): its KV goes to host memory (freed here), and it
        waits in the retracted queue to be restored before new requests are admitted (SGLang's retraction)."""
        def out_now(i: int) -> int:
            return d.local_rids[i] + d.steps_done - d.join_step[i]

        rid = min(d.local_rids, key=lambda i: (out_now(i), -self.reqs[i].prompt_len, -i))
        r = self.reqs[rid]
        r.tokens_out = out_now(rid)
        del d.local_rids[rid]
        context = r.prompt_len + r.tokens_out
        d.local.remove(context, r.prompt_len + r.output_len)
        d.used_tokens -= context
        d.reserved_tokens -= context
        d.local_active -= 1
        d.cancel_finish(rid)
        r.retractions += 1
        self._restoring.add(rid)
        d.retracted.append(rid)
        self._sample_mem(t, d)

    def _on_step_done(self, t: float, d_idx: int) -> None:
        d = self.decode[d_idx]
        d.steps_done += 1
        d.local.context_tokens += d.local.requests
        d.used_tokens += d.local.requests
        if self.watermark:  # on-demand growth (checked to fit before the step started)
            d.reserved_tokens += d.local.requests
        for p, g in zip(self.prefill, d.remote):
            g.context_tokens += g.requests
            p.exec_used_tokens += g.requests
            if g.requests:
                self._sample_mem(t, p)
        for rid in d.pop_finished():
            self._finish(t, self.reqs[rid], d, context=self.reqs[rid].prompt_len + self.reqs[rid].output_len)
        for p, g in zip(self.prefill, d.remote):
            if g.requests:
                self._sample_mem(t, p)
        self._sample_mem(t, d)
        self._try_prealloc(t, d)
        self._start_step(t, d)

    def _finish(self, t: float, r: RequestRecord, d: DecodeGPU, *, context: int, joined: bool = True) -> None:
        """The request's last token is out: free its KV where it lives."""
        r.finish_s, r.tokens_out = t, r.output_len
        max_seq = r.prompt_len + r.output_len
        if r.offloaded:
            p = self.prefill[r.prefill_instance]
            if joined:
                d.remote[p.idx].remove(context, max_seq)
                p.exec_used_tokens -= context
            else:
                p.exec_used_tokens -= r.prompt_len
            p.exec_reserved_tokens -= max_seq
            d.offloaded_admitted -= 1
            self._try_prefill(t, p)
            self._try_prealloc(t, d)
        else:
            if joined:
                d.local.remove(context, max_seq)
                d.used_tokens -= context
                del d.local_rids[r.rid]
            else:
                d.used_tokens -= r.prompt_len
            d.reserved_tokens -= context if self.watermark else max_seq
            d.local_active -= 1
            self._try_prealloc(t, d)

    def _sample_mem(self, t: float, g: PrefillGPU | DecodeGPU) -> None:
        kind = PREFILL if isinstance(g, PrefillGPU) else DECODE
        self.mem.append(MemSample(kind, g.idx, t, g.used_tokens, g.reserved_tokens))


def simulate(cluster: SimConfig, workload: WorkloadConfig, *, costs: str = "scheduler",
             policy: str = "scheduler") -> SimResult:
    """Build the request stream, the cost and policy adapters, run, and attach the resolved configs."""
    from .costs import get_costs
    from .policy import get_policy
    from .workloads import make_requests

    sim_costs = get_costs(costs, cluster)
    result = Simulator(cluster, make_requests(workload), sim_costs, get_policy(policy, cluster, sim_costs)).run()
    result.config["workload"] = asdict(workload)
    result.config["adapters"] = {"costs": costs, "policy": policy}
    return result

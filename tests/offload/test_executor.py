"""AttentionExecutor against the torch reference, and its error paths (full pool, unknown request)."""

import pytest
import torch
from adrenaline_kernels.reference import decode_attention_ref

from adrenaline_sgl.offload.errors import OffloadError, PoolFullError, SlotError, UnknownRequestError
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool, SlotAllocator

from .conftest import HKV, LAYERS, D, random_kv, random_rows


def _expected(prompt_k, prompt_v, new_k, new_v, q):
    """Reference attention of one request over prompt + appended tokens: q [1, Hq, D], KV [L, Hkv, D]."""
    k = torch.cat([prompt_k, new_k])
    v = torch.cat([prompt_v, new_v])
    return decode_attention_ref(q, k, v, torch.tensor([0, k.shape[0]]), torch.arange(k.shape[0]))


@pytest.mark.parametrize("lengths", [(1,), (5, 1, 9), (17, 3)])
def test_steps_match_reference_over_prompt_and_appended_tokens(make_executor, lengths):
    ex = make_executor()
    prompts = {f"r{i}": random_kv(n, seed=i) for i, n in enumerate(lengths)}
    for rid, (k, v) in prompts.items():
        ex.adopt_copy(rid, k, v)
    rids = list(prompts)
    appended = {rid: ([], []) for rid in rids}  # per layer lists of new k, v
    for step in range(3):
        ex.begin_step(rids)
        for layer in range(LAYERS):
            q, k_new, v_new = random_rows(len(rids), seed=100 * step + layer)
            o, lse = ex.step(layer, rids, q, k_new, v_new)
            assert o.shape == q.shape and lse.shape == q.shape[:2] and lse.dtype == torch.float32
            for i, rid in enumerate(rids):
                if layer == 0:
                    appended[rid][0].append([])
                    appended[rid][1].append([])
                appended[rid][0][step].append(k_new[i])
                appended[rid][1][step].append(v_new[i])
                pk, pv = prompts[rid]
                new_k = torch.stack([appended[rid][0][s][layer] for s in range(step + 1)])
                new_v = torch.stack([appended[rid][1][s][layer] for s in range(step + 1)])
                o_ref, lse_ref = _expected(pk[layer], pv[layer], new_k, new_v, q[i : i + 1])
                torch.testing.assert_close(o[i : i + 1], o_ref, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(lse[i : i + 1], lse_ref, rtol=1e-5, atol=1e-5)
    assert ex.stats().tokens_held == sum(lengths) + 3 * len(lengths)


def test_adopt_shares_the_pool_without_copy_and_hands_back_adopted_slots():
    k_buffers = [torch.randn(32, HKV, D) for _ in range(LAYERS)]
    v_buffers = [torch.randn(32, HKV, D) for _ in range(LAYERS)]
    alloc = SlotAllocator(32, first_slot=1)  # the "prefill engine's" allocator
    prompt_slots = alloc.alloc(6)
    ex = AttentionExecutor(KVPool(k_buffers, v_buffers, alloc), "reference")
    assert ex.pool.k_buffers[0] is k_buffers[0]  # the engine's own tensors, not copies
    ex.adopt("a", prompt_slots, free_on_release=False)
    ex.begin_step(["a"])
    q, k_new, v_new = random_rows(1)
    o, _ = ex.step(0, ["a"], q, k_new, v_new)
    new_slot = int(ex.open_plan().new_slots[0])
    torch.testing.assert_close(k_buffers[0][new_slot], k_new[0])  # appended in place in the shared buffer
    o_ref, _ = _expected(k_buffers[0][prompt_slots], v_buffers[0][prompt_slots], k_new, v_new, q)
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    free_before = alloc.available_size()
    returned = ex.release("a")
    assert sorted(returned.tolist()) == sorted(prompt_slots.tolist())
    assert alloc.available_size() == free_before + 1  # only the decode slot; the engine frees the prompt
    alloc.free(returned)
    assert alloc.available_size() == 31


def test_adopting_a_held_slot_twice_is_refused(make_executor):
    ex = make_executor()
    slots = ex.pool.allocator.alloc(4)
    ex.adopt("a", slots)
    with pytest.raises(SlotError, match="already held"):
        ex.adopt("b", slots[:1])
    with pytest.raises(OffloadError, match="already held"):
        ex.adopt("a", ex.pool.allocator.alloc(1))


def test_release_of_unknown_request_is_an_error(make_executor):
    ex = make_executor()
    with pytest.raises(UnknownRequestError, match="'ghost'"):
        ex.release("ghost")
    ex.adopt_copy("a", *random_kv(3))
    ex.release("a")
    with pytest.raises(UnknownRequestError):
        ex.release("a")  # released twice


def test_full_pool_refuses_adoption_and_corrupts_nothing(make_executor):
    ex = make_executor(num_slots=10)
    ex.adopt_copy("a", *random_kv(7, seed=1))
    before_k = [b.clone() for b in ex.pool.k_buffers]
    before_stats = ex.stats()
    with pytest.raises(PoolFullError, match="3 free slots, 4 needed"):
        ex.adopt_copy("b", *random_kv(4, seed=2))
    assert ex.stats() == before_stats
    assert all(torch.equal(a, b) for a, b in zip(before_k, ex.pool.k_buffers))
    assert ex.rids == ["a"]
    ex.adopt_copy("b", *random_kv(3, seed=2))  # what fits still goes in
    with pytest.raises(PoolFullError):
        ex.begin_step(["a", "b"])  # no slot left for the step's tokens
    assert ex.seq_len("a") == 7 and ex.seq_len("b") == 3


def test_abort_step_returns_slots_and_lengths(make_executor):
    ex = make_executor()
    ex.adopt_copy("a", *random_kv(4))
    free = ex.stats().slots_free
    ex.begin_step(["a"])
    assert ex.stats().slots_free == free - 1
    ex.abort_step()
    assert ex.stats().slots_free == free and ex.seq_len("a") == 4
    with pytest.raises(OffloadError, match="no open step"):
        ex.step(0, ["a"], *random_rows(1))


def test_step_checks_batch_and_shapes(make_executor):
    ex = make_executor()
    ex.adopt_copy("a", *random_kv(4))
    ex.adopt_copy("b", *random_kv(4))
    ex.begin_step(["a", "b"])
    with pytest.raises(OffloadError, match="rids differ"):
        ex.step(0, ["b", "a"], *random_rows(2))
    with pytest.raises(OffloadError, match="layer must lie"):
        ex.step(LAYERS, ["a", "b"], *random_rows(2))
    with pytest.raises(OffloadError, match="need q"):
        ex.step(0, ["a", "b"], *random_rows(3))
    with pytest.raises(UnknownRequestError):
        ex.begin_step(["a", "nope"])


def test_stats_report_capacity_tokens_and_time(make_executor):
    ex = make_executor(num_slots=40)
    ex.adopt_copy("a", *random_kv(5))
    ex.begin_step(["a"])
    ex.step(0, ["a"], *random_rows(1))
    s = ex.stats()
    assert (s.requests, s.tokens_held, s.slots_free, s.capacity_slots, s.layer_calls) == (1, 6, 34, 40, 1)
    assert s.attention_time_s > 0 and s.bytes_held == 6 * ex.pool.bytes_per_slot and s.slots_used == 6


def test_unknown_attention_name_is_a_clear_error():
    with pytest.raises(ValueError, match="attention must be one of"):
        AttentionExecutor(KVPool.standalone(1, 4, 1, 4), "flash")


@pytest.mark.parametrize("num_q_heads", [None, 4])  # planned in begin_step, or lazily by the first step
def test_triton_executor_matches_reference_executor(make_executor, num_q_heads):
    pytest.importorskip("adrenaline_kernels.decode", reason="the Triton kernels are not in adrenaline_kernels")
    tri, ref = make_executor(attention="triton"), make_executor(attention="reference")
    tri.num_q_heads = num_q_heads
    assert tri.ops.name == "triton"
    for ex in (tri, ref):
        ex.adopt_copy("a", *random_kv(9, seed=3))
        ex.adopt_copy("b", *random_kv(2, seed=4))
        ex.begin_step(["b", "a"])
    assert (tri.open_plan().attention_plan is not None) == (num_q_heads is not None)
    q, k, v = random_rows(2, seed=5)
    o_t, lse_t = tri.step(1, ["b", "a"], q, k, v)
    o_r, lse_r = ref.step(1, ["b", "a"], q, k, v)
    torch.testing.assert_close(o_t, o_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lse_t, lse_r, rtol=1e-4, atol=1e-4)
    assert torch.equal(tri.pool.k_buffers[1], ref.pool.k_buffers[1])  # append_kv wrote the same rows


# ---- several clients (decode instances) of one executor ----


def _run_all_layers(ex, client, rids, seed=0):
    plan = ex.open_plan(client)
    return [ex.run_layer(client, plan.step_id, layer, *random_rows(len(rids), seed=seed + layer))
            for layer in range(LAYERS)]


def test_release_mid_step_keeps_the_rest_of_the_step_and_holds_only_its_slot(make_executor):
    ex, direct = make_executor(num_slots=40), make_executor(num_slots=40)
    for e in (ex, direct):
        e.adopt_copy("a", *random_kv(3, seed=1))
        e.adopt_copy("b", *random_kv(4, seed=2))
        e.adopt_copy("c", *random_kv(2, seed=3))
    ex.begin_step(["a", "b"], client="A")
    ex.begin_step(["c"], client="B")
    direct.begin_step(["a", "b"])
    q, k, v = random_rows(2, seed=4)
    ex.run_layer("A", ex.open_plan("A").step_id, 0, q, k, v)
    direct.step(0, ["a", "b"], q, k, v)
    free = ex.stats().slots_free
    ex.release("a")  # mid-step: 3 prompt slots free now, its step slot once A's step is over
    assert ex.stats().slots_free == free + 3 and ex.rids == ["b", "c"]
    for layer in range(1, LAYERS):  # b's row goes on exactly as without the release
        q, k, v = random_rows(2, seed=10 + layer)
        o, lse = ex.run_layer("A", ex.open_plan("A").step_id, layer, q, k, v)
        o_ref, lse_ref = direct.step(layer, ["a", "b"], q, k, v)
        assert torch.equal(o[1], o_ref[1]) and torch.equal(lse[1], lse_ref[1])
    assert ex.open_plan("B") is not None and ex.seq_len("c") == 3  # the other client's step is untouched
    assert ex.stats().slots_free == free + 4  # A's step ran its last layer: the held slot is back
    assert ex.stats().tokens_held == 5 + 3


def test_release_after_the_steps_last_layer_frees_everything_at_once(make_executor):
    ex = make_executor(num_slots=40)
    ex.adopt_copy("a", *random_kv(3))
    ex.begin_step(["a"], client="A")
    _run_all_layers(ex, "A", ["a"])
    ex.release("a")
    assert ex.stats().slots_free == 40
    with pytest.raises(OffloadError, match="no open step|all its 2 layers"):
        ex.run_layer("A", 0, 0, *random_rows(1))


def test_releasing_every_row_of_an_unfinished_step_closes_it(make_executor):
    """How a client that vanished without a goodbye gives its step slots back: decode releases its requests."""
    ex = make_executor(num_slots=40)
    ex.adopt_copy("a", *random_kv(3, seed=1))
    ex.adopt_copy("b", *random_kv(2, seed=2))
    ex.begin_step(["a", "b"], client="gone")
    step_id = ex.open_plan("gone").step_id
    ex.run_layer("gone", step_id, 0, *random_rows(2))
    ex.release("a")
    assert ex.open_plan("gone") is not None  # b still decodes in it
    ex.release("b")
    assert ex.open_plan("gone") is None and ex.stats().slots_free == 40
    with pytest.raises(OffloadError, match="no open step"):
        ex.run_layer("gone", step_id, 1, *random_rows(2))


def test_run_layer_checks_what_can_change_per_layer(make_executor):
    ex = make_executor()
    ex.adopt_copy("a", *random_kv(4))
    with pytest.raises(OffloadError, match="no open step for this client"):
        ex.run_layer("A", 0, 0, *random_rows(1))
    step_id = ex.begin_step(["a"], client="A").step_id
    with pytest.raises(OffloadError, match=f"step {step_id + 1} is not this client's open step \\({step_id}\\)"):
        ex.run_layer("A", step_id + 1, 0, *random_rows(1))
    with pytest.raises(OffloadError, match="layer must lie in"):
        ex.run_layer("A", step_id, LAYERS, *random_rows(1))
    with pytest.raises(OffloadError, match="2 rows, but step"):
        ex.run_layer("A", step_id, 0, *random_rows(2))
    _run_all_layers(ex, "A", ["a"])
    with pytest.raises(OffloadError, match="has run all its 2 layers"):  # no append after the step is complete
        ex.run_layer("A", step_id, 0, *random_rows(1))
    assert ex.seq_len("a") == 5


def test_a_request_in_another_clients_unfinished_step_is_refused(make_executor):
    ex = make_executor()
    ex.adopt_copy("a", *random_kv(4))
    ex.begin_step(["a"], client="A")
    with pytest.raises(OffloadError, match="another client's unfinished step"):
        ex.begin_step(["a"], client="B")
    _run_all_layers(ex, "A", ["a"])
    ex.begin_step(["a"], client="B")  # A's step is complete: its token stays, B may step the request now
    assert ex.open_plan("A") is None and ex.seq_len("a") == 6


def test_end_client_rolls_back_an_unfinished_step_and_keeps_a_finished_one(make_executor):
    ex = make_executor(num_slots=40)
    ex.adopt_copy("a", *random_kv(4, seed=1))
    ex.adopt_copy("b", *random_kv(4, seed=2))
    ex.begin_step(["a"], client="A")
    ex.begin_step(["b"], client="B")
    _run_all_layers(ex, "B", ["b"])
    ex.run_layer("A", ex.open_plan("A").step_id, 0, *random_rows(1))
    ex.end_client("A")
    ex.end_client("B")
    assert (ex.seq_len("a"), ex.seq_len("b")) == (4, 5)
    s = ex.stats()
    assert (s.steps, s.layer_calls, s.clients, s.slots_free) == (2, 1 + LAYERS, (), 40 - 9)


def test_a_step_closed_while_its_layer_runs_frees_its_slot_only_after_that_layer(make_executor):
    """The last row of a step released (from another thread) while a layer of it is writing: the step closes,
    but the slot that layer writes to stays held until the layer is over (no other request can get it)."""
    import dataclasses
    import threading

    ex = make_executor(num_slots=40)
    ex.adopt_copy("a", *random_kv(3))
    step_id = ex.begin_step(["a"], client="A").step_id
    entered, gate = threading.Event(), threading.Event()
    real_append = ex.ops.append_kv

    def slow_append(*args):
        entered.set()
        gate.wait(5)
        real_append(*args)

    ex.ops = dataclasses.replace(ex.ops, append_kv=slow_append)
    layer = threading.Thread(target=lambda: ex.run_layer("A", step_id, 0, *random_rows(1)))
    layer.start()
    assert entered.wait(5)
    ex.release("a")  # its only row: the step is closed
    assert ex.open_plan("A") is None
    assert ex.stats().slots_free == 39  # the step slot the running layer writes is still held
    gate.set()
    layer.join(timeout=5)
    assert ex.stats().slots_free == 40  # freed by the next control call after the layer

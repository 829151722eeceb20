"""Multi-turn ShareGPT: every answer with the conversation before it as its prompt (measured sample and files)."""

import json

import numpy as np
import pytest

from adrenaline_sgl.sim.config import WorkloadConfig
from adrenaline_sgl.sim.datasets import answer_rows, load_lengths
from adrenaline_sgl.sim.workloads import default_lengths, make_requests, mean_lengths, measured_pairs


def test_answer_rows_sum_the_history_and_keep_one_bos():
    turns = [("human", 11), ("gpt", 21), ("human", 6), ("gpt", 31)]  # counts with BOS
    assert answer_rows(turns, bos_tokens=1) == [(11, 21), (1 + 10 + 20 + 5, 31)]
    assert answer_rows(turns) == [(11, 21), (11 + 21 + 6, 31)]  # counts without BOS: plain sums


def test_answer_rows_only_answers_after_the_first_turn_and_empty_turns():
    # a split piece may start with an answer: it has no history, so it is no request
    assert answer_rows([("gpt", 9), ("human", 5), ("gpt", 7), ("gpt", 3)], bos_tokens=1) == [(13, 7), (19, 3)]
    assert answer_rows([("human", 0), ("gpt", 4)], bos_tokens=1) == [(1, 4)]  # empty text: 0 tokens, no BOS
    assert answer_rows([("human", 4), ("system", 4), ("assistant", 4)]) == [(8, 4)]
    with pytest.raises(ValueError, match="turn 1: a token count is >= 0, got -1"):
        answer_rows([("human", 4), ("gpt", -1)])
    with pytest.raises(ValueError, match="bos_tokens must be 0 or 1"):
        answer_rows([], bos_tokens=2)


def test_the_measured_sample_as_loaded():
    prompt, output = measured_pairs("sharegpt_multiturn")
    assert len(prompt) == 20_000 and prompt.min() >= 0 and output.min() >= 0
    # the statistics the data header and docs/simulator.md quote: unfiltered, and within Llama-2's context
    assert (prompt.mean(), output.mean()) == pytest.approx((941, 336), abs=1)
    assert mean_lengths("sharegpt_multiturn", 4096) == pytest.approx((933, 333), abs=1)
    first_prompt, first_output = measured_pairs("sharegpt")
    # the history makes prompts longer, and later answers are longer than first ones
    assert prompt.mean() > 2.2 * first_prompt.mean() and output.mean() > 1.3 * first_output.mean()


def test_sampling_fits_the_context_and_is_a_function_of_the_seed():
    p, o = default_lengths("sharegpt_multiturn", 5000, seed=0, max_context=4096)
    assert (p + o <= 4096).all() and p.min() >= 2 and o.min() >= 2
    assert p.mean() == pytest.approx(933, rel=0.04) and o.mean() == pytest.approx(333, rel=0.04)
    again = default_lengths("sharegpt_multiturn", 5000, seed=0, max_context=4096)
    other = default_lengths("sharegpt_multiturn", 5000, seed=1, max_context=4096)
    assert (again[0] == p).all() and (again[1] == o).all() and not (other[0] == p).all()
    a, b = (make_requests(WorkloadConfig(name="sharegpt_multiturn", num_requests=300, seed=3)) for _ in range(2))
    assert (a.arrival_s == b.arrival_s).all() and (a.prompt_len == b.prompt_len).all()
    assert (a.output_len == b.output_len).all()


def test_a_sharegpt_file_gives_every_answer_for_the_multiturn_workload(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "a" * 40}, {"from": "gpt", "value": "b" * 400},
                           {"from": "human", "value": "c" * 8}, {"from": "gpt", "value": "d" * 80}]},
        {"conversations": [{"from": "gpt", "value": "e" * 12}]},
    ]  # fmt: skip
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(rows))
    prompt, output = load_lengths(path, "sharegpt_multiturn")  # the 4-chars-per-token proxy
    assert prompt.tolist() == [10, 10 + 100 + 2] and output.tolist() == [100, 20]
    assert [a.tolist() for a in load_lengths(path, "sharegpt")] == [[10], [100]]  # first turns only
    reqs = make_requests(WorkloadConfig(name="sharegpt_multiturn", dataset_path=str(path), num_requests=4))
    assert sorted(set(zip(reqs.prompt_len.tolist(), reqs.output_len.tolist()))) == [(10, 100), (112, 20)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "x"}\n')
    with pytest.raises(ValueError, match="line 1: workload 'sharegpt_multiturn' needs a 'conversations'"):
        load_lengths(bad, "sharegpt_multiturn")


def test_both_samples_differ_only_in_what_they_count():
    # every multi-turn row at position 1 is a first-turn row: its smallest prompts are single turns
    prompt, output = measured_pairs("sharegpt_multiturn")
    first = set(zip(*(a.tolist() for a in measured_pairs("sharegpt"))))
    short = [(p, o) for p, o in zip(prompt.tolist(), output.tolist()) if (p, o) in first]
    assert len(short) > 0.15 * len(prompt)  # about 11,142 of 61,236 answers are first answers
    assert np.mean([p for p, _ in short]) < 0.5 * prompt.mean()

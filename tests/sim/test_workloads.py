"""Synthetic lengths, Poisson arrivals, dataset files and their one-line errors."""

import json

import numpy as np
import pytest

from adrenaline_sgl.sim.config import SimConfig, WorkloadConfig
from adrenaline_sgl.sim.datasets import load_lengths
from adrenaline_sgl.sim.workloads import (
    SYNTHETIC,
    default_lengths,
    make_requests,
    mean_lengths,
    measured_pairs,
    poisson_arrivals,
    sample_pairs,
    synthetic_lengths,
)


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_lengths_respect_the_context_and_follow_their_means(name):
    prompt, output = synthetic_lengths(name, 20_000, seed=0, max_context=4096)
    assert (prompt + output <= 4096).all() and prompt.min() >= 4 and output.min() >= 4
    prompt_law, output_law = SYNTHETIC[name]
    assert prompt.mean() == pytest.approx(prompt_law.mean_tokens, rel=0.08)  # clipping moves the mean a little
    # the 4096-token context truncates long reasoning traces
    assert output.mean() < output_law.mean_tokens and (prompt + output == 4096).any()


def test_sharegpt_default_is_the_measured_sample_filtered_as_bench_serving_does():
    prompt, output = measured_pairs("sharegpt")
    assert len(prompt) == 17_400 and prompt.min() >= 0 and output.min() >= 0  # empty turns count 0
    # the statistics docs/simulator.md quotes: unfiltered, within Llama-2's context, vLLM's 1024/2048 filter
    assert (prompt.mean(), output.mean()) == pytest.approx((393, 234), abs=1)
    assert mean_lengths("sharegpt", 4096) == pytest.approx((347, 230), abs=1)
    vllm = (prompt >= 4) & (output >= 4) & (prompt <= 1024) & (prompt + output <= 2048)
    assert (prompt[vllm].mean(), output[vllm].mean()) == pytest.approx((248, 233), abs=1)
    p, o = default_lengths("sharegpt", 5000, seed=0, max_context=4096)
    assert (p + o <= 4096).all() and p.min() >= 2 and o.min() >= 2
    assert o.mean() == pytest.approx(230, rel=0.06) and np.median(o) == pytest.approx(138, rel=0.1)


def test_pairs_over_the_context_are_dropped_not_clipped():
    prompt, output = np.array([100, 3000, 1, 50]), np.array([200, 2000, 10, 1])
    p, o = sample_pairs(prompt, output, 8, seed=0, max_context=4096)
    assert set(zip(p.tolist(), o.tolist())) == {(100, 200)}  # too long, too short prompt, too short output
    with pytest.raises(ValueError, match="no request that fits a 4096-token context"):
        sample_pairs(np.array([5000]), np.array([10]), 4, seed=0, max_context=4096)


def test_poisson_rate_and_common_random_numbers():
    t = poisson_arrivals(2.0, 20_000, seed=1)
    assert np.all(np.diff(t) >= 0)
    assert 1.0 / np.diff(t).mean() == pytest.approx(2.0, rel=0.03)
    slow, fast = (make_requests(WorkloadConfig(request_rate=r, num_requests=50, seed=4)) for r in (1.0, 5.0))
    assert (slow.prompt_len == fast.prompt_len).all() and (slow.arrival_s > fast.arrival_s).all()


def _sharegpt(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "a" * 40}, {"from": "gpt", "value": "b" * 400}]},
        {"conversations": [{"from": "human", "value": "only one turn"}]},
        {"conversations": [{"from": "human", "value": "c" * 80}, {"from": "gpt", "value": "d" * 8}]},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(rows))
    return path


def test_sharegpt_json_with_the_char_proxy(tmp_path):
    prompt, output = load_lengths(_sharegpt(tmp_path), "sharegpt")
    assert prompt.tolist() == [10, 20] and output.tolist() == [100, 2]
    wl = WorkloadConfig(name="sharegpt", dataset_path=str(_sharegpt(tmp_path)), num_requests=6, request_rate=1.0)
    reqs = make_requests(wl)
    assert sorted(set(zip(reqs.prompt_len.tolist(), reqs.output_len.tolist()))) == [(10, 100), (20, 2)]


def test_openthoughts_jsonl_and_parquet(tmp_path):
    rows = [
        {"system": "s", "conversations": [{"from": "user", "value": "q" * 20},
                                          {"from": "assistant", "value": "r" * 4000}]},
        {"problem": "p" * 12, "deepseek_reasoning": "x" * 100, "deepseek_solution": "y" * 20},
    ]
    jsonl = tmp_path / "ot.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prompt, output = load_lengths(jsonl, "openthoughts")
    assert prompt.tolist() == [5, 3] and output.tolist() == [1000, 30]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    parquet = tmp_path / "ot.parquet"
    pq.write_table(pa.Table.from_pylist([rows[0]]), parquet)
    assert load_lengths(parquet, "openthoughts")[1].tolist() == [1000]


def test_azure_trace_csv(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,374,44\n4.3,396,109\n")
    assert [a.tolist() for a in load_lengths(path, "azure_conv")] == [[374, 396], [44, 109]]


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("bad.json", '{"a": 1}', "expected a JSON list"),
        ("bad.json", '[{"text": "x"}]', "entry 0: no 'conversations'"),
        ("bad.jsonl", '{"problem": "x"}\n{oops\n', "line 2 is not valid JSON"),
        ("bad.csv", "a,b\n1,2\n", "needs columns"),
        ("bad.csv", "num_prefill_tokens,num_decode_tokens\nx,1\n", "line 2: token counts are not numbers"),
        ("bad.txt", "hello", "unknown suffix"),
        ("bad.parquet", "not parquet", "not a readable parquet file"),
    ],
)
def test_malformed_files_give_one_line_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        load_lengths(path, "sharegpt")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_missing_file_and_bad_configs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="dataset file not found"):
        load_lengths(tmp_path / "nope.json", "sharegpt")
    with pytest.raises(ValueError, match="request_rate=0 must be"):
        WorkloadConfig(request_rate=0)
    with pytest.raises(ValueError, match="workload='alpaca' is unknown; valid: sharegpt"):
        WorkloadConfig(name="alpaca")
    with pytest.raises(ValueError, match="azure_conv.*is a trace"):
        WorkloadConfig(name="azure_conv")
    with pytest.raises(ValueError, match=r"executor_sm_share must be in \(0, 1\) \(the executor's fraction"):
        SimConfig(executor_sm_share=1.5)
    with pytest.raises(ValueError, match="offload='': expected never, always, auto or ratio:F"):
        SimConfig(offload="")


def test_the_shared_azure_trace_is_a_workload():
    from adrenaline_sgl.tools.vidur_check import shared_data_dir

    trace = shared_data_dir() / "traces" / "azure_conv.csv"
    if not trace.is_file():
        pytest.skip(f"shared trace absent at {trace} (set ADRENALINE_SHARED_DATA)")
    reqs = make_requests(WorkloadConfig(name="azure_conv", dataset_path=str(trace), num_requests=500, seed=2))
    assert len(reqs) == 500 and (reqs.prompt_len + reqs.output_len <= 4096).all()
    assert reqs.prompt_len.mean() > reqs.output_len.mean()  # conversation trace: long prompts, short answers

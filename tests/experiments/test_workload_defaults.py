"""Figures 5 and 1 default to the multi-turn ShareGPT sample (the calibration's), first turns stay selectable."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from adrenaline_sgl.sim.workload_calibration import check
from experiments import run as runner

ROOT = Path(__file__).resolve().parents[2]


def _config(fig: str) -> dict:
    return yaml.safe_load((ROOT / "experiments" / fig / "config.yaml").read_text())


def test_fig1_decode_context_is_the_workloads_in_flight_mean():
    cfg = _config("fig1")
    assert cfg["workload"] == "sharegpt_multiturn"
    assert cfg["decode_context_tokens"] == round(check(cfg["workload"]).in_flight_tokens)


def test_fig5_runs_either_sample_and_reads_a_file_as_every_answer(tmp_path, monkeypatch):
    assert _config("fig5")["workload"] == "sharegpt_multiturn"
    assert _config("fig5")["emulated"]["workload"] == "sharegpt"  # the emulator's validation setup
    sg = tmp_path / "sg.json"
    turns = [("human", "a" * 400), ("gpt", "b" * 40), ("human", "c" * 40), ("gpt", "d" * 80)]
    sg.write_text(json.dumps([{"conversations": [{"from": who, "value": text} for who, text in turns]}]))
    means = {}
    for tag, extra in (("multi", []), ("first", ["--workload", "sharegpt"]), ("file", ["--dataset-path", str(sg)])):
        monkeypatch.setenv("RESULTS_DIR", str(tmp_path / tag))
        assert runner.run_one("fig5", ["--no-plot", "--rates", "1", "--num-requests", "40", *extra]) == 0
        rows = list(csv.DictReader(open(tmp_path / tag / "fig5" / "requests.csv")))
        means[tag] = sum(int(r["prompt_len"]) for r in rows) / len(rows)
        workload = {r["workload"] for r in csv.DictReader(open(tmp_path / tag / "fig5" / "e2e.csv"))}
        assert workload == ({"sharegpt"} if tag == "first" else {"sharegpt_multiturn"})
    assert means["multi"] > 1.8 * means["first"]
    assert means["file"] == (100 + 100 + 10 + 10) / 2  # the two answers: 100 and 100 + 10 + 10 tokens (chars / 4)

"""AdrenalineArgs validation and the argparse group (no sglang import needed)."""

import argparse

import pytest

from adrenaline_sgl.sglang_ext import flags


def _parse(argv):
    parser = argparse.ArgumentParser()
    flags.add_cli_args(parser)
    return flags.from_namespace(parser.parse_args(argv))


def test_defaults_are_stock_sglang():
    args = flags.AdrenalineArgs()
    assert not args.enabled
    assert args.executor_addr == "127.0.0.1:31000"


def test_every_flag_parses_into_its_field():
    args = _parse(
        [
            "--adrenaline-role", "prefill",
            "--adrenaline-transport", "inproc",
            "--adrenaline-executor-host", "10.0.0.2",
            "--adrenaline-executor-port", "4000",
            "--adrenaline-executor-sm-share", "0.25",
            "--adrenaline-executor-max-tokens", "8192",
            "--adrenaline-unmarked-offload", "share:0.3",
            "--adrenaline-inner-attention-backend", "torch_native",
            "--adrenaline-remote-timeout-s", "2.5",
        ]
    )  # fmt: skip
    assert args == flags.AdrenalineArgs(
        role="prefill",
        transport="inproc",
        executor_host="10.0.0.2",
        executor_port=4000,
        executor_sm_share=0.25,
        executor_max_tokens=8192,
        unmarked_offload="share:0.3",
        inner_attention_backend="torch_native",
        remote_timeout_s=2.5,
    )
    assert args.enabled and args.executor_addr == "10.0.0.2:4000"


def test_every_flag_has_help():
    parser = argparse.ArgumentParser()
    flags.add_cli_args(parser)
    text = parser.format_help()
    for field in flags.dataclasses.fields(flags.AdrenalineArgs):
        assert "--adrenaline-" + field.name.replace("_", "-") in text
        assert field.metadata["help"]


def test_unknown_role_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        _parse(["--adrenaline-role", "both"])
    assert "--adrenaline-role" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"role": "both"}, "role"),
        ({"transport": "rdma"}, "transport"),
        ({"executor_port": 0}, "executor_port"),
        ({"executor_sm_share": 0.0}, "executor_sm_share"),
        ({"executor_sm_share": 1.5}, "executor_sm_share"),
        ({"executor_max_tokens": -1}, "executor_max_tokens"),
        ({"executor_sm_share": 1.0}, "executor_sm_share"),
        ({"unmarked_offload": "ratio:0.5"}, "unmarked_offload"),  # the scheduler's ratio:F means a bound, not this
        ({"unmarked_offload": "auto"}, "unmarked_offload"),
        ({"unmarked_offload": "share:1.5"}, "unmarked_offload"),
        ({"unmarked_offload": "share:nan"}, "unmarked_offload"),
        ({"remote_timeout_s": 0}, "remote_timeout_s"),
        ({"executor_host": ""}, "executor_host"),
        ({"inner_attention_backend": "adrenaline"}, "inner_attention_backend"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field) as err:
        flags.AdrenalineArgs(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, share", [("never", 0.0), ("always", 1.0), ("share:0", 0.0), ("share:0.25", 0.25),
                                         ("share:1", 1.0)])  # fmt: skip
def test_unmarked_offload_is_a_share_of_requests(text, share):
    assert flags.AdrenalineArgs(unmarked_offload=text).unmarked_share == share


def test_unmarked_requests_offload_a_hashed_share_and_the_mark_wins():
    """share:P offloads about P of the unmarked requests, the same ones on prefill and decode (by room)."""
    from types import SimpleNamespace as NS

    from adrenaline_sgl.protocol import OFFLOAD_KEY
    from adrenaline_sgl.sglang_ext.marks import is_offloaded

    def req(room, mark=None):
        return NS(bootstrap_room=room, rid="r", sampling_params=NS(custom_params={} if mark is None else
                                                                   {OFFLOAD_KEY: mark}))  # fmt: skip

    def args(text):
        return flags.AdrenalineArgs(role="decode", unmarked_offload=text)

    rooms = range(0, 2**63 - 1, 2**63 // 4000)
    hits = sum(is_offloaded(req(r), args("share:0.3")) for r in rooms)
    assert 0.27 < hits / len(rooms) < 0.33
    assert [is_offloaded(req(r), args("share:0.3")) for r in rooms[:50]] == \
        [is_offloaded(req(r), args("share:0.3")) for r in rooms[:50]]  # fmt: skip
    assert not any(is_offloaded(req(r), args("never")) for r in rooms[:50])
    assert is_offloaded(req(None), args("always")) and not is_offloaded(req(None), args("share:0.9"))
    assert not is_offloaded(req(7, mark=False), args("always")) and is_offloaded(req(7, mark=True), args("never"))
    assert not is_offloaded(req(7, mark=True), flags.AdrenalineArgs())  # role none: stock SGLang


def test_of_a_record_without_our_attribute_is_disabled():
    class Record:
        pass

    assert flags.of(Record()) == flags.AdrenalineArgs()


def test_colocation_flags_parse_and_default_to_a_fixed_share():
    assert flags.AdrenalineArgs().ttft_slo_ms is None  # unset: today's fixed --adrenaline-executor-sm-share
    args = _parse(
        [
            "--adrenaline-role", "prefill",
            "--adrenaline-executor-partitioner", "mps",
            "--adrenaline-ttft-slo-ms", "250",
            "--adrenaline-colocation-profile", ".",
            "--adrenaline-replan-interval-s", "0.5",
            "--adrenaline-arrival-window-s", "30",
        ]
    )  # fmt: skip
    assert (args.executor_partitioner, args.ttft_slo_ms, args.colocation_profile) == ("mps", 250.0, ".")
    assert (args.replan_interval_s, args.arrival_window_s) == (0.5, 30.0)
    assert _parse([]).ttft_slo_ms is None and _parse([]).executor_partitioner == "auto"


def test_unknown_partitioner_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        _parse(["--adrenaline-executor-partitioner", "gpu-slices"])
    assert "--adrenaline-executor-partitioner" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"executor_partitioner": "gpu-slices"}, "executor_partitioner"),
        ({"ttft_slo_ms": 0.0}, "ttft_slo_ms"),
        ({"ttft_slo_ms": -5.0}, "ttft_slo_ms"),
        ({"ttft_slo_ms": float("nan")}, "ttft_slo_ms"),
        ({"ttft_slo_ms": float("inf")}, "ttft_slo_ms"),
        ({"ttft_slo_ms": 100.0, "executor_sm_share": 1.0}, "executor_sm_share"),
        ({"replan_interval_s": 0.0}, "replan_interval_s"),
        ({"replan_interval_s": 1e6}, "replan_interval_s"),
        ({"arrival_window_s": -1.0}, "arrival_window_s"),
        ({"colocation_profile": "no/such/profile"}, "colocation_profile"),
    ],
)
def test_bad_colocation_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field) as err:
        flags.AdrenalineArgs(**kwargs)
    assert "\n" not in str(err.value)

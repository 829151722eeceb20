"""Partitioner registry, the CPU behaviour of every backend, the fake, MPS daemon control with a fake
binary, and the GPU checks (skipped here)."""

import os
import stat
import textwrap

import pytest
import torch

from adrenaline_sgl.colocation import (
    PartitionerUnavailable,
    RepartitionNeedsRestart,
    ShareError,
    make_partitioner,
)
from adrenaline_sgl.colocation.fake import FakePartitioner
from adrenaline_sgl.colocation.mps import ENV_PERCENT, MPSDaemon, MPSPartitioner, percentage_for

NO_GPU = not torch.cuda.is_available()


def test_unknown_partitioner_names_the_choices():
    with pytest.raises(ValueError, match=r"partitioner must be one of \['fake', 'green_context', 'mps', 'none'\]"):
        make_partitioner("magic", 0.25)


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU path")
def test_green_context_is_not_available_here_without_a_gpu():
    with pytest.raises(PartitionerUnavailable, match="not available here") as e:
        make_partitioner("green_context", 0.25, "cuda:0")
    assert "\n" not in str(e.value)


def test_green_context_on_a_cpu_device_is_not_available():
    with pytest.raises(PartitionerUnavailable, match="not available here: device='cpu'"):
        make_partitioner("green_context", 0.25, "cpu")


def test_bad_share_is_rejected_before_any_backend_work():
    for bad in (0.0, 1.0, 2.0):
        with pytest.raises(ShareError, match=r"sm_share must be in \(0, 1\)"):
            make_partitioner("green_context", bad, "cuda:0")


def test_none_partitioner_on_cpu_runs_on_the_current_stream():
    with make_partitioner("none", 0.3, "cpu") as part:
        assert part.stream is None and part.num_sms is None
        part.repartition(0.5)  # nothing to enforce, nothing to restart
    with pytest.raises(RuntimeError, match="not open"):
        _ = part.stream


def test_fake_partitioner_rounds_and_repartitions_live():
    part = make_partitioner("fake", 0.25)
    assert part.num_sms == 32 and part.total_sms == 132 and part.partition.prefill_sms == 100
    part.repartition(0.5)
    assert part.num_sms == 64 and part.history == [32, 64] and part.released == 1
    with pytest.raises(ShareError, match="rounds to 0 SMs"):
        part.repartition(0.02)
    part.close()


def test_repartition_without_live_support_asks_for_a_restart():
    part = FakePartitioner(live=False).open(0.25)
    with pytest.raises(RepartitionNeedsRestart, match="restart the executor with sm_share=0.5"):
        part.repartition(0.5)
    assert part.num_sms == 32  # unchanged


def test_mps_without_the_daemon_binary_is_a_one_line_error():
    with pytest.raises(PartitionerUnavailable, match="'no-such-mps-control' is not on PATH") as e:
        MPSPartitioner("cuda:0", binary="no-such-mps-control")
    assert "\n" not in str(e.value)
    with pytest.raises(PartitionerUnavailable, match="MPS is not available here"):
        MPSDaemon(binary="no-such-mps-control")


@pytest.mark.parametrize("share, pct", [(0.001, 1), (0.2, 20), (0.201, 21), (0.999, 100)])
def test_mps_percentage_rounds_up(share, pct):
    assert percentage_for(share) == pct


FAKE_CONTROL = textwrap.dedent(
    """\
    #!/bin/sh
    # Fake nvidia-cuda-mps-control: -d starts (a state file), stdin commands as the real one.
    state="$CUDA_MPS_PIPE_DIRECTORY/state"
    if [ "$1" = "-d" ]; then echo 4242 > "$state"; exit 0; fi
    read cmd arg
    case "$cmd" in
      get_server_list) [ -f "$state" ] && cat "$state" ;;
      get_client_list) [ "$arg" = "4242" ] && echo 777 && echo 778 ;;
      quit) rm -f "$state" ;;
      *) echo "unknown $cmd" >&2; exit 1 ;;
    esac
    """
)


@pytest.fixture
def fake_mps_binary(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    path = bindir / "nvidia-cuda-mps-control"
    path.write_text(FAKE_CONTROL)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return path


def test_mps_daemon_start_list_stop_with_a_fake_binary(fake_mps_binary, tmp_path):
    with MPSDaemon(gpu=1, workdir=tmp_path / "mps", timeout_s=5) as daemon:
        assert daemon.running and daemon.server_pids() == [4242]
        assert daemon.client_pids() == [777, 778]
        env = daemon.client_env(0.25, total_sms=132)
        assert env[ENV_PERCENT] == "25" and env["CUDA_VISIBLE_DEVICES"] == "1"
        assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(tmp_path / "mps" / "pipe")
    assert not daemon.running and not (tmp_path / "mps" / "pipe" / "state").exists()
    daemon.stop()  # twice is fine


def test_mps_partitioner_checks_the_percentage_before_touching_cuda(fake_mps_binary, monkeypatch):
    monkeypatch.setenv(ENV_PERCENT, "50")
    with pytest.raises(RuntimeError, match=f"{ENV_PERCENT}=50 in this process but sm_share=0.25 needs 25"):
        make_partitioner("mps", 0.25, "cuda:0")
    monkeypatch.setenv(ENV_PERCENT, "25")
    if NO_GPU:
        with pytest.raises(PartitionerUnavailable, match="not available here"):
            make_partitioner("mps", 0.25, "cuda:0")


@pytest.mark.gpu
@pytest.mark.parametrize("share", [1 / 16, 0.25, 0.5])
def test_green_context_stream_runs_work_on_the_rounded_partition(share):
    from adrenaline_sgl.colocation.arch import share_to_sms
    from adrenaline_sgl.colocation.partitioner import cuda_device_info

    info = cuda_device_info("cuda:0")
    with make_partitioner("green_context", share, "cuda:0") as part:
        assert part.num_sms == share_to_sms(share, info)
        with torch.cuda.stream(part.stream):
            x = torch.randn(1024, 1024, device="cuda")
            y = x @ x
        part.stream.synchronize()
        torch.testing.assert_close(y, x @ x)
        part.repartition(0.5)
        assert part.num_sms == share_to_sms(0.5, info)


def test_executor_partitioner_maps_the_plugin_flag():
    from adrenaline_sgl.colocation import executor_partitioner

    assert executor_partitioner(1.0, "cpu").name == "none"  # the whole GPU
    assert executor_partitioner(0.25, "cpu").name == "none"  # auto on a CPU device
    assert executor_partitioner(0.25, "cpu", name="fake").num_sms == 32
    with pytest.raises(ShareError, match=r"sm_share must be in \(0, 1\)"):
        executor_partitioner(1.5, "cpu")
    if NO_GPU:
        with pytest.raises(PartitionerUnavailable, match="not available here"):
            executor_partitioner(0.25, "cuda:0")  # auto on CUDA means green contexts, no silent fallback

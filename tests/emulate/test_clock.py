"""The emulated GPU timeline on a fake clock: forwards queue back to back, results are ready at their time."""

import pytest

from adrenaline_sgl.emulate.clock import POLL_SLEEP_S, EmulatedDone, EmulatedGPU, Link


class FakeClock:
    def __init__(self):
        self.t = 100.0
        self.slept = []

    def now(self):
        return self.t

    def sleep(self, s):
        self.slept.append(s)
        self.t += s


def test_forwards_run_back_to_back_and_scale_with_the_clock():
    c = FakeClock()
    gpu = EmulatedGPU(clock_scale=4, now=c.now, sleep=c.sleep)
    assert gpu.submit(10.0) == (100.0, pytest.approx(100.04))  # 10 ms emulated = 40 ms wall
    c.t += 0.01  # the scheduler launches the next step while the first still runs (overlap scheduling)
    start, done = gpu.submit(5.0)
    assert start == pytest.approx(100.04) and done == pytest.approx(100.06)
    c.t = 101.0  # idle GPU: the next forward starts now
    assert gpu.submit(1.0)[0] == 101.0


def test_done_event_waits_for_the_emulated_gpu():
    c = FakeClock()
    gpu = EmulatedGPU(clock_scale=1, now=c.now, sleep=c.sleep)
    _, done = gpu.submit(20.0)
    ev = EmulatedDone(gpu, done)
    ev.record()
    assert not ev.query() and c.slept == [POLL_SLEEP_S]  # polling sleeps a little instead of spinning
    ev.synchronize()
    assert c.t == pytest.approx(done) and ev.query()
    slept = len(c.slept)
    ev.synchronize()  # already done: no sleep
    assert len(c.slept) == slept


def test_link_serializes_transfers_and_credits_the_real_copy():
    c = FakeClock()
    link = Link(clock_scale=2, now=c.now, sleep=c.sleep)
    assert link.transfer(5.0) == pytest.approx(0.010)
    # a transfer whose real copy already took 4 ms of wall time (2 ms emulated) waits the other 6 ms
    assert link.transfer(5.0, already_s=0.004) == pytest.approx(0.006)


def test_clock_scale_below_one_is_refused():
    with pytest.raises(ValueError, match="clock_scale"):
        EmulatedGPU(0.5)

"""`make demo-check` with Adrenaline, end to end on CPU: 1P1D SGLang with the plugin (cpu_demo.yaml), decode
attention offloaded to the prefill's executor through the adrenaline proxy (policy `always`).

The greedy chat answer must contain Paris, and the logs must show the request admitted offloaded on decode
(no local KV), its KV kept and adopted by the executor on prefill, served there (layer calls > 0) and released
at the end. Mixed batches, token-exactness against local decoding, streaming, aborts, an executor stall and an
executor kill are in test_adrenaline_e2e.py (one shared stack).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CPU_DEMO = ROOT / "adrenaline_sgl" / "configs" / "cpu_demo.yaml"


def test_demo_check_answers_paris_with_the_request_offloaded(tmp_path):
    from adrenaline_sgl import launch

    assert launch.main(["--config", str(CPU_DEMO), "--check", "--run-dir", str(tmp_path)]) == 0  # Paris
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    decode_log, prefill_log = (run / "decode-0.log").read_text(), (run / "prefill-0.log").read_text()
    admitted = re.findall(r"adrenaline: admitted (room-\d+) offloaded to 127\.0\.0\.1:\d+ .*no local KV", decode_log)
    assert len(admitted) == 1, decode_log[-3000:]  # the one check request, admitted without KV on decode
    room = admitted[0]
    assert f"kept KV of {room}" in prefill_log and "for the executor" in prefill_log  # adopted in place
    served = re.search(rf"released KV of {room} \(executor layer calls so far: (\d+)\)", prefill_log)
    assert served and int(served.group(1)) >= 30, prefill_log[-3000:]  # >= one decode step of 30 layers
    assert f"adrenaline: released {room}" in decode_log  # at finish decode told the executor

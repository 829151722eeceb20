"""The campaign's small decisions, on made-up inputs: verdicts, which shapes to tune, which (M, context) fits."""

from __future__ import annotations

import pytest

from experiments.gpu_campaign.steps import kernels, offload
from experiments.gpu_campaign.verdicts import offload_verdicts, share_for_fraction


def test_share_for_fraction_interpolates_and_says_never():
    assert share_for_fraction([(0.125, 0.3), (0.25, 0.7), (1.0, 0.9)]) == pytest.approx(0.125 + 0.3 / 0.4 * 0.125)
    assert share_for_fraction([(0.0625, 0.65), (1.0, 0.9)]) == 0.0625  # the smallest share already reaches it
    assert share_for_fraction([(0.5, 0.4), (1.0, 0.55)]) is None


def test_offload_verdicts_apply_the_goal_and_the_bound():
    rows = [dict(offloaded_rows="0", step_vs_local_only="1.0"), dict(offloaded_rows="16", step_vs_local_only="1.03"),
            dict(offloaded_rows="64", step_vs_local_only="1.2")]  # fmt: skip
    v = offload_verdicts(rows, bound=49)
    assert v == {16: {"ratio": 1.03, "meets_1_05": True, "within_bound": True},
                 64: {"ratio": 1.2, "meets_1_05": False, "within_bound": False}}  # fmt: skip


def test_tuning_targets_the_shapes_that_missed():
    goals = {"bandwidth": {"met": True}, "never_slower_than_sglang": {"met": False, "slower_shapes": [
        dict(model="gqa-32-8", dtype="float16", batch=8, ctx=1024, speedup=0.9)]}}  # fmt: skip
    args = kernels.tune_args(goals)
    assert args[args.index("--models") + 1] == "gqa-32-8" and args[args.index("--batches") + 1] == "8"
    missed_bw = kernels.tune_args({"bandwidth": {"met": False}, "never_slower_than_sglang": {"met": True}})
    assert "llama2-7b" in missed_bw and "4096" in missed_bw and "32" in missed_bw


def test_offload_context_fits_an_h200_and_not_more():
    h200 = 143771 << 20  # MiB, as nvidia-smi reports the card
    choice = next((m, c) for m, c in offload.CANDIDATES if offload.fits(m, c, h200))
    assert choice == (64, 256)
    assert offload.pool_bytes(192, 256) == (192 * (256 + offload.NEW_TOKENS) + 64) * 32 * 2 * 32 * 128 * 2
    assert not offload.fits(16, 256, 40 << 30)  # a 40 GiB card holds no Llama-2-7B run of this size

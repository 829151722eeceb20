"""SM granularity, share rounding and the one-line errors for bad shares."""

import math

import pytest

from adrenaline_sgl.colocation.arch import DeviceInfo, ShareError, check_share, share_to_sms, sm_granularity

H100 = DeviceInfo("H100", 132, (9, 0))
A100 = DeviceInfo("A100", 108, (8, 0))


@pytest.mark.parametrize(
    "cc, expected", [((6, 1), (1, 1)), ((7, 0), (2, 2)), ((8, 0), (4, 2)), ((8, 9), (4, 2)), ((9, 0), (8, 8)),
                     ((10, 0), (8, 8))],  # fmt: skip
)
def test_granularity_table(cc, expected):
    g = sm_granularity(cc)
    assert (g.min_sms, g.multiple) == expected


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1, 1.5, math.nan, math.inf, "0.5", None, True])
def test_share_outside_open_unit_interval_is_a_one_line_error(share):
    with pytest.raises(ShareError) as e:
        check_share(share)
    msg = str(e.value)
    assert "\n" not in msg and "sm_share" in msg and "(0, 1)" in msg


def test_share_that_rounds_to_zero_sms():
    with pytest.raises(ShareError, match=r"rounds to 0 SMs") as e:
        share_to_sms(0.01, H100)  # 1.3 SMs, granules of 8
    assert "\n" not in str(e.value) and "sm_share >=" in str(e.value)


@pytest.mark.parametrize("share", [i / 64 for i in range(2, 64)])
@pytest.mark.parametrize("device", [H100, A100], ids=["h100", "a100"])
def test_rounding_respects_granularity_and_leaves_the_other_side_a_granule(share, device):
    if share * device.total_sms < device.granularity.min_sms / 2:
        pytest.skip("rounds to zero: covered above")
    g = device.granularity
    n = share_to_sms(share, device)
    assert n >= g.min_sms and n % g.multiple == 0
    assert device.total_sms - n >= g.min_sms
    # nearest allowed size: no allowed size is strictly closer to the request
    assert all(abs(m - share * device.total_sms) >= abs(n - share * device.total_sms) for m in device.partition_sizes())


def test_hopper_sizes_are_multiples_of_eight():
    assert H100.partition_sizes() == list(range(8, 125, 8))
    assert share_to_sms(0.2, H100) == 24  # 26.4 SMs -> 24 (nearer than 32)

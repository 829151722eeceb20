"""The validation table: simulated compositions against measured data, within stated bounds."""

import pytest

from adrenaline_sgl.tools import sim_validate as validate
from adrenaline_sgl.tools.vidur_check import shared_data_dir


def test_validation_against_vidur_within_stated_bounds():
    if not (shared_data_dir() / "vidur").is_dir():
        pytest.skip(f"shared data absent at {shared_data_dir()} (set ADRENALINE_SHARED_DATA)")
    rows, notes = validate.validation_rows()
    assert not notes
    decode = [r for r in rows if r.quantity.startswith("decode")]
    transfer = [r for r in rows if r.quantity.startswith("KV transfer")]
    assert len(decode) == len(validate.DECODE_BATCHES) and len(transfer) == len(validate.TRANSFER_TOKENS)
    assert all(abs(r.err_pct) <= 25 for r in decode), validate.markdown(decode, [])  # stated in docs/simulator.md
    assert all(abs(r.err_pct) <= 40 for r in transfer), validate.markdown(transfer, [])


def test_missing_shared_data_skips_rows_with_a_note(tmp_path):
    rows, notes = validate.validation_rows(tmp_path)
    assert all(r.quantity.startswith("attention share") for r in rows) and "not found" in notes[0]
    assert "| attention share of decode time |" in validate.markdown(rows, notes)

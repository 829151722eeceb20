"""Quick runs of every simulated figure into one temporary results folder, shared by the tests here."""

from __future__ import annotations

import pytest

SIM_FIGS = ("fig1", "fig2", "fig5", "fig6", "fig7", "fig8")


@pytest.fixture(scope="session")
def quick_results(tmp_path_factory):
    """RESULTS_DIR with every simulated figure produced by `--quick` (CSVs and PNGs)."""
    from experiments.run import run_one

    results = tmp_path_factory.mktemp("results")
    mp = pytest.MonkeyPatch()
    mp.setenv("RESULTS_DIR", str(results))
    mp.delenv("MODE", raising=False)
    try:
        for fig in SIM_FIGS:
            assert run_one(fig, ["--quick"]) == 0, fig
    finally:
        mp.undo()
    return results

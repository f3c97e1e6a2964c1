"""The DFlash-table harness (``make bench``) end to end against the running app: both arms, every cell.

What ``make bench-quick`` checks on the demo pair, here on the e2e app that is up anyway, with fewer prompts:
no request lost, tokens generated in each cell, the DFlash arm's drafts counted through ``/metrics``, and the
table, JSON and PNG written.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench.dflash_table import QUICK, Endpoint, run_table, smoke_problems
from tests.e2e.served import Served
from tools.e2e_app import AR_MODEL, DFLASH_MODEL

pytestmark = pytest.mark.e2e


# The quick run's tasks, at less cost: every code path (warmup, concurrent cells, counters, report) still runs.
SETTINGS = dataclasses.replace(QUICK, concurrency=(1, 2), num_prompts=2, max_tokens=16)


def test_dflash_table_harness_measures_both_arms(served: Served, tmp_path: Path):
    endpoints = {"dflash": Endpoint(served.base_url, DFLASH_MODEL), "ar": Endpoint(served.base_url, AR_MODEL)}
    out = tmp_path / "table"
    results = run_table(endpoints, SETTINGS, out, None, "e2e app")
    assert smoke_problems(results) == []
    for arm in ("ar", "dflash"):
        assert set(results[arm]) == set(SETTINGS.tasks)
        assert all(set(cells) == {str(c) for c in SETTINGS.concurrency} for cells in results[arm].values())
    assert json.loads(out.with_suffix(".json").read_text())["dflash"] == results["dflash"]
    assert out.with_suffix(".png").stat().st_size > 0
    assert "GSM8K" in out.with_suffix(".md").read_text()

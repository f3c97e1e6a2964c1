"""Where the simulators write: full runs into the committed folder the docs cite, quick runs beside it.

A full run regenerates what ``docs/`` quotes (``make bench-routing-sim``, ``make bench-autoscaling``); a
``--quick`` run is a check, written under the git-ignored ``bench/results/`` so it never replaces them.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def results_dir(docs_folder: str, quick: bool) -> Path:
    return REPO / "bench" / "results" if quick else REPO / "docs" / docs_folder

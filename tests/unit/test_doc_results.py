"""Every result file the docs cite is committed: a table or figure in docs/ names the file it came from, and
that file must be in the repository (a make target regenerates it; bench/results/ is not committed)."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CITED = re.compile(r"docs/results/[A-Za-z0-9_./*-]*[A-Za-z0-9_/*]")  # a glob (overhead*.json) too


def test_every_cited_result_file_is_committed():
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split())
    docs = [*(REPO / "docs").glob("*.md"), REPO / "README.md"]
    cited = {m.group(0) for doc in docs for m in CITED.finditer(doc.read_text())}
    assert cited, "no citations found: the pattern is wrong"
    # A path, a glob, a folder, or a result prefix without its suffix (a benchmark's --out: .json and .png).
    missing = sorted(
        c
        for c in cited
        if not any(
            fnmatch.fnmatch(t, c) or fnmatch.fnmatch(t, c + ".*") or t.startswith(c.rstrip("/") + "/") for t in tracked
        )
    )
    assert not missing, missing

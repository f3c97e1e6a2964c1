"""The image ships every package: a package missing from the Dockerfile's COPY lines fails only on a GPU node."""

from __future__ import annotations

import re

from tests.paths import REPO_ROOT


def test_dockerfile_copies_every_package():
    copied = set(re.findall(r"^COPY (\w+) \1$", (REPO_ROOT / "Dockerfile").read_text(), flags=re.M))
    packages = {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")} - {"tests"}
    assert copied == packages

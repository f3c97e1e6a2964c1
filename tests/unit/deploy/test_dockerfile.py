"""The image: what a mistake in the Dockerfile would break only on a cluster."""

from __future__ import annotations

import re

from ray._common.utils import import_attr

from deployments.proxy_headers import PROXY_CALLBACK, PROXY_CALLBACK_ENV
from tests.paths import REPO_ROOT


def test_dockerfile_copies_every_package():
    copied = set(re.findall(r"^COPY (\w+) \1$", (REPO_ROOT / "Dockerfile").read_text(), flags=re.M))
    packages = {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")} - {"tests"}
    assert copied == packages


def test_every_proxy_in_the_image_loads_the_client_header_guard():
    """Serve reads its proxy callback from the environment of `ray start`, which runs in the image."""
    env = dict(re.findall(r"^ENV (\w+)=(\S+)$", (REPO_ROOT / "Dockerfile").read_text(), flags=re.M))
    assert env.get(PROXY_CALLBACK_ENV) == PROXY_CALLBACK
    assert callable(import_attr(PROXY_CALLBACK))

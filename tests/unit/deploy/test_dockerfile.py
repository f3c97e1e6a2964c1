"""The image: what a mistake in the Dockerfile would break only on a cluster."""

from __future__ import annotations

import re

from ray._common.utils import import_attr

from deployments.proxy_callback import PROXY_CALLBACK_ENV
from deployments.serve_environment import SERVE_ENVIRONMENT
from tests.paths import REPO_ROOT


def test_dockerfile_copies_every_package():
    copied = set(re.findall(r"^COPY (\w+) \1$", (REPO_ROOT / "Dockerfile").read_text(), flags=re.M))
    packages = {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")} - {"tests"}
    assert copied == packages


def test_every_ray_process_in_the_image_runs_serve_as_tested():
    """Serve reads its settings and its proxy callback from the environment of `ray start`, which runs in the
    image: the image's environment has every value the tests run with (tools/serve.py sets the same)."""
    env = dict(re.findall(r"^ENV (\w+)=(\S+)$", (REPO_ROOT / "Dockerfile").read_text(), flags=re.M))
    assert {name: env.get(name) for name in SERVE_ENVIRONMENT} == SERVE_ENVIRONMENT
    assert callable(import_attr(env[PROXY_CALLBACK_ENV]))

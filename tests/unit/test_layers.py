"""routing/ stays pure: importing it loads no Ray, vLLM, HTTP or Redis client (the simulator relies on it)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.paths import REPO_ROOT


def test_routing_imports_no_io_frameworks():
    code = (
        "import json, sys, routing.hashing, routing.index, routing.policy, routing.policies; "
        "print(json.dumps([m for m in ('ray', 'vllm', 'httpx', 'redis', 'torch') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []

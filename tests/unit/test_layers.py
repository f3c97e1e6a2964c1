"""The folders are layers and point one way; the pure cores load no I/O framework.

Bottom to top (docs/architecture.md): contracts -> the pure cores (routing, autoscaling) and the vLLM
plugin -> config -> deployments (the Ray/vLLM/HTTP shells) -> serve_app (the builder) -> training, tools
-> sim (the simulators, which drive the production shells on a fake clock) -> bench -> tests. A module
may import its own folder and the folders below it, never one above (function-local imports count too).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from tests.paths import REPO_ROOT

LAYERS: tuple[tuple[str, ...], ...] = (
    ("contracts",),
    ("routing", "autoscaling", "vllm_plugins"),
    ("config",),
    ("deployments",),
    ("serve_app",),
    ("training",),
    ("tools",),
    ("sim",),
    ("bench",),
    ("tests",),
)
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}
IO_FRAMEWORKS = ("ray", "vllm", "httpx", "redis", "torch", "fastapi")
LIGHT = {  # what importing these may not load: the pure cores nothing; config not vLLM (it imports it lazily)
    "pure cores": ("contracts", "routing", "autoscaling.policy", "routing.router", "routing.policies"),
    "config": ("config", "config.engine_validation"),
    "routing simulator": ("sim.routing.sweep", "sim.routing.routing_cost", "sim.routing.report"),
}


def _imports(path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out & set(RANK)


@pytest.mark.parametrize("package", [p for layer in LAYERS for p in layer])
def test_no_folder_imports_one_above_it(package: str):
    upward = {
        f"{path.relative_to(REPO_ROOT)} imports {other}"
        for path in (REPO_ROOT / package).rglob("*.py")
        for other in _imports(path)
        if RANK[other] > RANK[package] or (RANK[other] == RANK[package] and other != package)
    }
    assert not upward, sorted(upward)


def test_every_package_has_a_layer():
    packages = {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")}
    assert packages == set(RANK) - {"tests"} | ({"tests"} & packages)


@pytest.mark.parametrize("modules", LIGHT.values(), ids=LIGHT.keys())
def test_light_modules_import_no_io_framework(modules: tuple[str, ...]):
    code = (
        f"import json, sys, {', '.join(modules)}; print(json.dumps([m for m in {IO_FRAMEWORKS!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []

"""The metric names the Grafana dashboard queries, and the names Ray Serve defines (for the dashboard tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.paths import REPO_ROOT

DASHBOARD = REPO_ROOT / "observability" / "grafana-dashboard.json"
_NAME = re.compile(r"\b(vllm:[a-z0-9_]+|dflash_[a-z0-9_]+|ray_[a-z0-9_]+)")
# Ray exports a Counter "x" as x_total and a Histogram as x_bucket/_sum/_count, with a "ray_" prefix.
_RAY_SUFFIX = re.compile(r"_(total|bucket|sum|count)$")
_RAY_DEFINITION = re.compile(r"metrics\.(?:Counter|Gauge|Histogram)\(\s*(?:name=)?\"(serve_[a-z0-9_]+)\"")


def queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variables."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def queried_metrics() -> set[str]:
    return {m for expr in queries() for m in _NAME.findall(expr)}


def ray_serve_metric_names() -> set[str]:
    """Metric names Ray Serve 2.60 defines in its source, as its Prometheus export spells them (base names)."""
    import ray.serve

    root = Path(ray.serve.__file__).parent
    return {f"ray_{m}" for path in root.rglob("*.py") for m in _RAY_DEFINITION.findall(path.read_text())}


def ray_base_name(sample: str) -> str:
    return _RAY_SUFFIX.sub("", sample)


def scraped_sample_names(text: str) -> set[str]:
    """Sample names in a Prometheus text exposition."""
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}

"""The Grafana dashboard queries metrics that exist: Ray Serve's by its source, the app's by its registries.

tests/e2e/test_metrics_scrape.py checks the app's names against a real scrape of the running app.
"""

from __future__ import annotations

import json

from tests.dashboard_metrics import (
    DASHBOARD,
    queried_metrics,
    queries,
    ray_base_name,
    ray_serve_metric_names,
)


def test_dashboard_is_grafana_json_with_a_query_per_panel():
    dash = json.loads(DASHBOARD.read_text())
    graphs = [p for p in dash["panels"] if p["type"] != "row"]
    assert graphs and all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in graphs)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_dashboard_covers_what_operators_need():
    names = queried_metrics()
    for needed in (
        "dflash_serve_requests_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:generation_tokens_total",
        "vllm:spec_decode_num_accepted_tokens_total",
        "vllm:spec_decode_num_accepted_tokens_per_pos_total",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_hits_total",
        "dflash_router_decisions_total",
        "ray_serve_deployment_replica_healthy",
    ):
        assert needed in names
    assert any("histogram_quantile(0.99" in q for q in queries())


def test_ray_metrics_queried_are_defined_by_ray_serve():
    defined = ray_serve_metric_names()
    assert "ray_serve_deployment_request_counter" in defined  # the extraction itself works
    unknown = sorted(m for m in queried_metrics() if m.startswith("ray_") and ray_base_name(m) not in defined)
    assert unknown == []

"""Replica expositions are summed per (name, labels); ratios are averaged; other families dropped."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from deployments.ingress.metrics_merge import merge_expositions

REPLICA_A = """# HELP vllm:spec_decode_num_drafts Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 10.0
# HELP vllm:spec_decode_num_drafts_created Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_created gauge
vllm:spec_decode_num_drafts_created{engine="0",model_name="m"} 1.7e9
# HELP vllm:kv_cache_usage_perc KV-cache usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2
# HELP vllm:num_requests_running Running requests.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# HELP vllm:e2e_request_latency_seconds Latency.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="1.0",model_name="m"} 2.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 3.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="m"} 3.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="m"} 2.5
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.0e9
"""

REPLICA_B = (
    REPLICA_A.replace("} 10.0", "} 5.0")
    .replace("} 0.2", "} 0.6")
    .replace("} 3.0\n# HELP vllm:e2e", "} 1.0\n# HELP vllm:e2e")
)


def _values(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_sums_counters_gauges_histograms_and_averages_ratios():
    merged = _values(merge_expositions([REPLICA_A, REPLICA_B]))
    labels = (("engine", "0"), ("model_name", "m"))
    assert merged[("vllm:spec_decode_num_drafts_total", labels)] == 15
    assert merged[("vllm:num_requests_running", labels)] == 4
    assert abs(merged[("vllm:kv_cache_usage_perc", labels)] - 0.4) < 1e-9
    assert merged[("vllm:e2e_request_latency_seconds_count", labels)] == 6
    assert (
        merged[("vllm:e2e_request_latency_seconds_bucket", (("engine", "0"), ("le", "+Inf"), ("model_name", "m")))] == 6
    )


def test_drops_non_vllm_and_created_families():
    names = {name for name, _ in _values(merge_expositions([REPLICA_A]))}
    assert not any(n.startswith("process_") for n in names)
    assert not any(n.endswith("_created") for n in names)


def test_distinct_label_sets_stay_apart():
    other_model = REPLICA_A.replace('model_name="m"', 'model_name="n"')
    merged = _values(merge_expositions([REPLICA_A, other_model]))
    assert merged[("vllm:spec_decode_num_drafts_total", (("engine", "0"), ("model_name", "n")))] == 10


def test_empty_input():
    assert merge_expositions([]) == ""

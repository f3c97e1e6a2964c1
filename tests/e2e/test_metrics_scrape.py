"""Every app metric the Grafana dashboard queries is in a real scrape of the running app's /metrics."""

from __future__ import annotations

import httpx
import pytest

from tests.dashboard_metrics import queried_metrics, scraped_sample_names
from tools.e2e_app import AR_MODEL, DFLASH_MODEL

pytestmark = pytest.mark.e2e


def test_dashboard_metrics_exist_in_a_real_scrape(served):
    for model in (DFLASH_MODEL, AR_MODEL):
        for _ in range(2):
            r = httpx.post(
                f"{served.v1}/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "Count to five"}], "max_tokens": 8},
                timeout=120,
            )
            assert r.status_code == 200, r.text
    scraped = scraped_sample_names(httpx.get(f"{served.base_url}/metrics", timeout=60).text)
    app_metrics = {m for m in queried_metrics() if not m.startswith("ray_")}
    assert app_metrics, "the dashboard queries the app's own metrics"
    assert sorted(app_metrics - scraped) == []

"""The KubeRay manifest parses, embeds the production serve config verbatim, and has GPU workers and GCS FT."""

from __future__ import annotations

import yaml

from tests.paths import REPO_ROOT
from tools.serve_config import validate_serve_config


def _docs() -> dict[str, dict]:
    docs = yaml.safe_load_all((REPO_ROOT / "k8s" / "rayservice.yaml").read_text())
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_rayservice_embeds_the_generated_serve_config():
    spec = _docs()["RayService/dflash-serve"]["spec"]
    embedded = yaml.safe_load(spec["serveConfigV2"])
    validate_serve_config(embedded)
    shipped = yaml.safe_load((REPO_ROOT / "serve_app" / "configs" / "serve-b300.yaml").read_text())
    assert embedded == shipped, "paste serve_app/configs/serve-b300.yaml into k8s/rayservice.yaml's serveConfigV2"


def test_rayservice_cluster_has_b300_workers_and_gcs_fault_tolerance_through_redis():
    docs = _docs()
    cluster = docs["RayService/dflash-serve"]["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (workers,) = cluster["workerGroupSpecs"]
    (container,) = workers["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    redis_host, redis_port = cluster["gcsFaultToleranceOptions"]["redisAddress"].split(":")
    service = docs[f"Service/{redis_host}"]
    assert service["spec"]["ports"][0]["port"] == int(redis_port)
    # The app's routers reach the same Redis by the same name.
    app = yaml.safe_load(docs["RayService/dflash-serve"]["spec"]["serveConfigV2"])["applications"][0]["args"]["app"]
    assert f"{redis_host}:{redis_port}" in app["redis_url"]
    assert docs["Service/dflash-serve-lb"]["spec"]["ports"][0]["targetPort"] == 8000


def test_every_ray_pod_kills_a_dead_workers_process_group():
    """A crashed engine replica's vLLM processes must not outlive it (they hold the GPU), as in cluster.yaml."""
    cluster = _docs()["RayService/dflash-serve"]["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("RAY_process_group_cleanup_enabled") == "true", container["name"]

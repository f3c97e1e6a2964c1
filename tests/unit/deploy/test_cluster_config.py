"""The cluster definitions pass Ray's own cluster-launcher validation (the schema `ray up` applies) and
set up what the app relies on: the image, one engine per B300, Redis for GCS fault tolerance and routing."""

from __future__ import annotations

import re

import pytest
import yaml

from config import AppConfig
from tests.paths import REPO_ROOT

CLUSTERS = ["cluster.yaml", "cluster-local.yaml"]


def _load(name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / name).read_text())


@pytest.mark.parametrize("name", CLUSTERS)
def test_cluster_yaml_is_valid_for_ray_up(name: str):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_load(name)))  # raises on any schema violation


@pytest.mark.parametrize("name", CLUSTERS)
def test_every_node_runs_the_image_redis_and_metrics(name: str):
    cfg = _load(name)
    assert cfg["docker"]["image"].endswith("/dflash-serve:0.1.0")
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "redis-server --port 6380" in head_start
    assert "RAY_REDIS_ADDRESS=127.0.0.1:6380" in head_start  # GCS fault tolerance
    for start in (head_start, " ".join(cfg["worker_start_ray_commands"])):
        assert "--metrics-export-port=8080" in start  # observability/prometheus.yml scrapes it
        assert "RAY_process_group_cleanup_enabled=true" in start  # a dead replica's engines die with it
    # The app's redis_url names the head's Redis; every node resolves that name.
    app = AppConfig.from_yaml(REPO_ROOT / "serve_app" / "configs" / "gemma4-dflash-b300.yaml")
    assert app.redis_url is not None and "dflash-redis:6380" in app.redis_url
    hosts = [c for c in _initialization_commands(cfg) if "dflash-redis" in c]
    assert hosts and all("${RAY_HEAD_IP:-127.0.0.1} dflash-redis" in c and "/etc/hosts" in c for c in hosts)


def _initialization_commands(cfg: dict) -> list[str]:
    """Every node type's commands on the host (the provider-wide list, or each node type's own)."""
    lists = [cfg.get("initialization_commands", []), *(_host_commands(cfg, t) for t in _node_types(cfg))]
    return [c for commands in lists for c in commands]


def _host_commands(cfg: dict, node_type: dict) -> list[str]:
    """What runs on a node type's host before Docker starts: its own list, else the provider-wide one."""
    return node_type.get("initialization_commands", cfg.get("initialization_commands", []))


def _node_types(cfg: dict) -> list[dict]:
    return list(cfg.get("available_node_types", {}).values())


@pytest.mark.parametrize("name", CLUSTERS)
def test_containers_run_as_the_images_user_and_change_nothing_as_root(name: str):
    """The image's user is uid 1000 (not root); nothing a container runs needs root: no pip install into the
    image's Python, no /etc edits (those run on the host, before the container starts, where /etc/hosts is
    copied from), and every mount lands in that user's home or /run."""
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)$", dockerfile, flags=re.M)
    assert users and users[-1] == "1000"
    assert re.search(r"pip install --no-cache-dir -e ", dockerfile)  # editable: the synced tree is the code
    cfg = _load(name)
    in_container = [
        c
        for key in ("setup_commands", "head_setup_commands", "worker_setup_commands")
        for c in cfg.get(key, []) + [c for t in _node_types(cfg) for c in t.get(key, [])]
    ]
    assert not [c for c in in_container if "pip install" in c or "/etc/" in c or "sudo" in c]
    for option in cfg["docker"]["run_options"]:
        if option.startswith("-v "):
            target = option.split()[1].split(":")[1]
            assert target.startswith(("/home/ray/", "/run/")), option
    # Every node type, head and workers, gets the Redis host entry on its host.
    for node_type in _node_types(cfg):
        assert any("dflash-redis" in c for c in _host_commands(cfg, node_type))


def test_aws_gpu_workers_are_b300_nodes_with_one_engine_per_gpu():
    cfg = _load("cluster.yaml")
    gpu = cfg["available_node_types"]["gpu_b300"]
    assert gpu["node_config"]["InstanceType"] == "p6-b300.48xlarge"
    assert gpu["resources"]["GPU"] == 8 and gpu["resources"]["accelerator_type:B300"] >= 1
    assert cfg["available_node_types"]["head"]["resources"] == {"CPU": 0}
    app = AppConfig.from_yaml(REPO_ROOT / "serve_app" / "configs" / "gemma4-dflash-b300.yaml")
    replicas = app.models[0].replicas
    assert (replicas.num_gpus, replicas.accelerator_type) == (1, "B300")
    assert replicas.max_replicas == gpu["max_workers"] * gpu["resources"]["GPU"]


def test_cluster_yaml_explains_gcp():
    text = (REPO_ROOT / "cluster.yaml").read_text()
    assert "a4-highgpu-8g" in text and "B200" in text

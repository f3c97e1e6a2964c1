"""cluster.yaml passes Ray's own cluster-launcher validation (the schema `ray up` applies)."""

from __future__ import annotations

import yaml

from tests.conftest import REPO_ROOT


def test_cluster_yaml_is_valid_for_ray_up():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))  # raises on any schema violation
    gpu = cfg["available_node_types"]["gpu_b300"]
    assert gpu["node_config"]["InstanceType"] == "p6-b300.48xlarge"
    assert gpu["resources"]["GPU"] == 8

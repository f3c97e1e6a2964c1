"""Engine replica placement: the bundles and options Serve gets, and that Serve itself accepts them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from config import AppConfig, ModelConfig
from serve_app.build import engine_options
from serve_app.placement import ACCELERATOR_SHARE, replica_placement
from tests.paths import CONFIGS

B300 = "accelerator_type:B300"


def _model(**replicas: object) -> ModelConfig:
    engine = replicas.pop("engine", {})
    return ModelConfig.model_validate(
        {"id": "m", "target": "org/t", "engine": engine, "replicas": {"accelerator_type": "B300", **replicas}}
    )


def _serve_accepts(options: dict) -> None:
    """Serve's own validation of the options (raises as `serve deploy` would)."""
    from ray.serve._private.config import ReplicaConfig

    ReplicaConfig.create(
        lambda: None,
        ray_actor_options=options["ray_actor_options"],
        placement_group_bundles=options.get("placement_group_bundles"),
        placement_group_strategy=options.get("placement_group_strategy"),
        max_replicas_per_node=options.get("max_replicas_per_node"),
    )


def test_one_gpu_replica_is_one_bundle_holding_target_and_drafter():
    opts = replica_placement(_model(num_cpus=8, num_gpus=1))
    assert opts["placement_group_bundles"] == [{"CPU": 8, "GPU": 1, B300: ACCELERATOR_SHARE}]
    assert opts["placement_group_strategy"] == "STRICT_PACK"
    assert opts["ray_actor_options"] == {"num_cpus": 8, "num_gpus": 1, "accelerator_type": "B300"}
    _serve_accepts(opts)


def test_tensor_parallel_replica_is_one_bundle_per_gpu_and_the_actor_holds_none():
    opts = replica_placement(_model(num_cpus=8, num_gpus=1, engine={"tensor_parallel_size": 4}))
    bundles = opts["placement_group_bundles"]
    assert len(bundles) == 4 and all(b["GPU"] == 1 and b[B300] == ACCELERATOR_SHARE for b in bundles)
    assert bundles[0]["CPU"] == 8 and all("CPU" not in b for b in bundles[1:])
    assert opts["ray_actor_options"]["num_gpus"] == 0
    _serve_accepts(opts)


def test_custom_resources_go_into_the_replicas_bundle():
    opts = replica_placement(_model(num_cpus=0.5, resources={"engine_slot": 1}))
    assert opts["placement_group_bundles"] == [{"CPU": 0.5, "engine_slot": 1, B300: ACCELERATOR_SHARE}]
    assert opts["ray_actor_options"]["resources"] == {"engine_slot": 1}
    _serve_accepts(opts)


def test_per_node_cap_places_a_plain_actor_because_serve_forbids_it_with_bundles():
    opts = replica_placement(_model(num_cpus=8, num_gpus=1, max_replicas_per_node=4))
    assert "placement_group_bundles" not in opts and opts["max_replicas_per_node"] == 4
    _serve_accepts(opts)


@pytest.mark.parametrize(
    ("replicas", "needle"),
    [
        ({"num_gpus": 0, "engine": {"tensor_parallel_size": 2}}, "tensor_parallel_size"),
        ({"num_gpus": 1, "max_replicas_per_node": 8, "engine": {"tensor_parallel_size": 2}}, "max_replicas_per_node"),
        ({"placement_strategy": "EVERYWHERE"}, "placement_strategy"),
    ],
)
def test_impossible_placements_are_rejected_at_load(replicas: dict, needle: str):
    with pytest.raises(ValidationError, match=needle):
        _model(**replicas)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_place_engines_serve_accepts(path):
    for model in AppConfig.from_yaml(path).models:
        _serve_accepts(engine_options(model))

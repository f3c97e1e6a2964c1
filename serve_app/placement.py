"""Where an engine replica's processes go: Serve's actor options and its placement group, from the config.

One replica is one placement group. With ``tensor_parallel_size`` 1 it is a single bundle holding the
replica actor, its vLLM engine core and the DFlash drafter (vLLM runs the drafter inside the target's
worker, on the same GPU). With ``tensor_parallel_size`` N it is N bundles of one GPU: the replica actor
takes the first bundle's CPUs and no GPU, and vLLM's Ray executor starts one worker per bundle (the
drafter again beside each target rank). Reserving the whole group up front means a replica either gets
all its GPUs on one node (``STRICT_PACK``) or waits; it never starts with half an engine.

Ray Serve refuses ``max_replicas_per_node`` beside ``placement_group_bundles``; a capped single-GPU
replica is therefore placed as a plain actor reserving exactly its bundle, which Ray schedules the same.

Pure: no Ray import, so placement is unit-tested without a cluster.
"""

from __future__ import annotations

from typing import Any

from config import ModelConfig

# Ray turns ``accelerator_type: B300`` into a demand for this much of the node's ``accelerator_type:B300``
# resource; the replica's bundle must hold it too, or Serve refuses the actor as not fitting its bundle.
ACCELERATOR_SHARE = 0.001


def _positive(resources: dict[str, float]) -> dict[str, float]:
    """Ray rejects zero-valued bundle entries; an absent key means the same thing."""
    return {k: v for k, v in resources.items() if v > 0}


def replica_placement(model: ModelConfig) -> dict[str, Any]:
    """Serve deployment options placing one engine replica: actor options plus bundles or a per-node cap."""
    r = model.replicas
    tp = model.engine.tensor_parallel_size
    accel = {f"accelerator_type:{r.accelerator_type}": ACCELERATOR_SHARE} if r.accelerator_type else {}
    # TP=1: the engine runs in processes the actor spawns, which inherit its CUDA_VISIBLE_DEVICES, so the
    # actor holds the GPU. TP>1: vLLM's Ray workers hold one GPU each; the actor only coordinates.
    actor: dict[str, Any] = {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus if tp == 1 else 0}
    if r.accelerator_type:
        actor["accelerator_type"] = r.accelerator_type
    if r.resources:
        actor["resources"] = dict(r.resources)
    first = _positive({"CPU": r.num_cpus, "GPU": r.num_gpus, **accel, **r.resources})
    if r.max_replicas_per_node is not None or not first:  # (an empty bundle is invalid: nothing to reserve)
        options: dict[str, Any] = {"ray_actor_options": actor}
        if r.max_replicas_per_node is not None:
            options["max_replicas_per_node"] = r.max_replicas_per_node
        return options
    rank = _positive({"GPU": r.num_gpus, **accel})
    return {
        "ray_actor_options": actor,
        "placement_group_bundles": [first] + [rank] * (tp - 1),
        "placement_group_strategy": r.placement_strategy,
    }

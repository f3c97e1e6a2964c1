"""A discrete-event simulator of a DFlash serving cluster for comparing routing policies.

N replicas (vLLM-style continuous batching, a finite prefix-cached KV pool, DFlash decode, calibrated
to the seed table's B300 figures) behind a router that runs the real policy objects of ``routing/``
(and the anchors' algorithms from ``baselines/``) on vLLM block hashes of synthetic prompts. Modules:
``engine`` (step costs), ``kv_cache``, ``replica``, ``workloads``, ``cluster`` (the event loop and the
router), ``metrics``, ``sweep`` (the experiments), ``routing_cost``, ``report``. Run it with
``python -m sim.routing``; the model and its calibration are in docs/routing-simulator.md.
"""

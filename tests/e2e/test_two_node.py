"""A real two-node Ray cluster on this machine runs the app as `serve deploy` runs it on the B300 cluster.

The head and a worker node are separate `ray start` processes (tests/e2e/local_ray_cluster.py); GCS fault
tolerance and the routers' shared state use a real redis-server, as cluster.yaml sets them up. The
engines ask for ``accelerator_type:B300`` and an ``engine_slot`` resource (named as a fake: there is no B300
here) that the head offers twice and the worker once, so the two replicas of the model spread over both nodes,
the head can take the worker's replica, and a replica replaced while the head restarts can only go back to the
head (with a second slot on the worker, Serve once put it there: the restarted head's resources were not known
yet). The
app answers through either node's proxy (`proxy_location: EveryNode`, the worker's on a port of its own
since both share this machine), and when the worker node is killed it keeps answering through the head's
proxy while Serve brings the lost replica back on the head.

Before that, the head itself is restarted (its whole process tree killed and started again on the same
ports, as a head pod restarts under KubeRay): with GCS fault tolerance the worker reconnects, its
replicas keep running and keep answering through its proxy while the head is down, and the restarted
Serve controller recovers the app from the GCS state in Redis instead of deploying it anew.

Driven entirely from outside this process (the `ray` CLI, `serve deploy`, the dashboard's REST API and
HTTP): the test session may already hold its own in-process Ray.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from config import AppConfig
from tests.e2e.local_ray_cluster import RayNode, wait_for
from tests.paths import LOCAL_CONFIG, REPO_ROOT
from tools.ports import free_port
from tools.redis_server import RedisServer
from tools.serve_config import serve_config
from tools.tiny_models import ensure_models

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

MODEL = "tiny-gemma4-ar"
# Fake accelerator resources: what a p6-b300 node advertises, scaled down to two "GPUs" on the head, one on the worker.
HEAD_RESOURCES = {"engine_slot": 2, "accelerator_type:B300": 2}
WORKER_RESOURCES = {"engine_slot": 1, "accelerator_type:B300": 1}
START_TIMEOUT_S = 600  # vLLM CPU engines take minutes to start on this shared machine


def _app(redis_url: str) -> AppConfig:
    """One autoregressive model (the tiny random target), two replicas, two small ingress replicas."""
    base = AppConfig.from_yaml(LOCAL_CONFIG)
    target, _ = ensure_models()
    model = base.models[0]
    replicas = model.replicas.model_copy(
        update={
            "num_cpus": 0.5,
            "accelerator_type": "B300",
            "resources": {"engine_slot": 1},
            "min_replicas": 2,
            "max_replicas": 2,
        }
    )
    model = model.model_copy(update={"id": MODEL, "target": str(target), "speculative": None, "replicas": replicas})
    # Two ingress replicas, spread over the nodes (Serve's default): either node's proxy has a local one.
    ingress = base.ingress.model_copy(update={"num_cpus": 0.25, "num_replicas": 2})
    return base.model_copy(
        update={"name": "dflash-two-node", "models": [model], "ingress": ingress, "redis_url": redis_url}
    )


class Cluster:
    def __init__(self, head: RayNode, worker: RayNode, ports: dict[str, int], redis_url: str) -> None:
        self.head, self.worker, self.ports, self.redis_url = head, worker, ports, redis_url

    def alive_nodes(self) -> list[dict]:
        from ray.util.state import list_nodes

        # raise_on_missing_output=False: once the worker is gone the State API cannot reach it, which is the point.
        return list_nodes(
            address=self.head.dashboard_url, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False
        )

    def app_status(self, app: AppConfig) -> dict:
        r = httpx.get(f"{self.head.dashboard_url}/api/serve/applications/", timeout=10)
        r.raise_for_status()
        return r.json()["applications"].get(app.name, {})

    def replicas(self, app: AppConfig, deployment: str) -> dict[str, str]:
        """Replica id -> node id of a deployment's RUNNING replicas, as Serve reports them."""
        replicas = self.app_status(app)["deployments"][deployment]["replicas"]
        return {r["replica_id"]: r["node_id"] for r in replicas if r["state"] == "RUNNING"}

    def engine_nodes(self, app: AppConfig) -> list[str]:
        """Node ids of the model's RUNNING engine replicas."""
        return sorted(self.replicas(app, app.models[0].deployment_name()).values())

    def node_ids(self) -> tuple[str, str]:
        """(head, worker) node ids of the ALIVE nodes."""
        nodes = self.alive_nodes()
        head = next(n["node_id"] for n in nodes if n["is_head_node"])
        return head, next(n["node_id"] for n in nodes if not n["is_head_node"])


def _chat(port: int) -> str:
    """One chat completion through the proxy on ``port``; its finish reason (the random model's text may be empty)."""
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4},
        timeout=120,
    )
    r.raise_for_status()
    return r.json()["choices"][0]["finish_reason"]


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    log_dir = tmp_path_factory.mktemp("two-node-logs")
    redis = RedisServer()
    redis.start()
    temp_dir = Path(tempfile.mkdtemp(prefix="r7", dir="/tmp"))  # short: Ray's unix socket paths must fit
    ports = {"head_http": free_port(), "worker_http": free_port()}
    env = {
        "PYTHONPATH": str(REPO_ROOT),  # workers import serve_app & co. from this checkout
        "RAY_REDIS_ADDRESS": f"127.0.0.1:{redis.port}",  # GCS fault tolerance, as cluster.yaml sets it
        "RAY_external_storage_namespace": temp_dir.name,
        "RAY_process_group_cleanup_enabled": "true",  # a dead replica's engine dies with it, as cluster.yaml sets
        "RAY_AUTH_MODE": "disabled",  # loopback-only test cluster; plain HTTP checks need no token
        # Ray's memory monitor kills workers when the *machine* is 95% full, which on this shared machine other
        # people's engines decide; it killed the Serve controller, whose recovery then stopped healthy replicas.
        "RAY_memory_monitor_refresh_ms": "0",
        # How long the worker waits for a restarted head's GCS (default 60 s; a head start takes longer here).
        "RAY_gcs_rpc_server_reconnect_timeout_s": "600",
    }
    nodes: list[RayNode] = []
    try:
        head = RayNode("head", temp_dir=temp_dir, log_dir=log_dir, num_cpus=2, resources=HEAD_RESOURCES, env=env)
        nodes.append(head)
        head.start(lambda: len(Cluster(head, head, ports, redis.url).alive_nodes()) == 1, 300)
        worker_env = {**env, "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(ports["worker_http"])}
        worker = RayNode(
            "worker",
            temp_dir=temp_dir,
            log_dir=log_dir,
            num_cpus=2,
            resources=WORKER_RESOURCES,
            head_address=head.address,
            env=worker_env,
        )
        nodes.append(worker)
        c = Cluster(head, worker, ports, redis.url)
        worker.start(lambda: len(c.alive_nodes()) == 2, 300)
        yield c
    finally:
        for node in reversed(nodes):
            node.kill()
        redis.stop()
        # Ray's own logs outlive the cluster for a post-mortem; its sockets and spill files don't.
        if (temp_dir / "session_latest" / "logs").is_dir():
            shutil.copytree(temp_dir / "session_latest" / "logs", log_dir / "ray", dirs_exist_ok=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.timeout(2400)  # three engine starts in a row (deploy, head restart, failover), minutes each here
def test_two_nodes_survive_a_head_restart_and_losing_the_worker(cluster: Cluster, tmp_path: Path):
    app = _app(cluster.redis_url)
    config = serve_config(app, host="127.0.0.1", port=cluster.ports["head_http"])
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "serve"), "deploy", str(path), "-a", cluster.head.dashboard_url],
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    wait_for(lambda: cluster.app_status(app).get("status") == "RUNNING", START_TIMEOUT_S, "the app to run")

    # One engine replica and one ingress replica per node: the fake accelerator slots of both nodes are used.
    head_id, worker_id = cluster.node_ids()
    assert cluster.engine_nodes(app) == sorted([head_id, worker_id])
    assert sorted(cluster.replicas(app, "Ingress").values()) == sorted([head_id, worker_id])

    # Either node's proxy answers (a load balancer's targets are all the nodes).
    for port in (cluster.ports["head_http"], cluster.ports["worker_http"]):
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()["models"] == [MODEL]
        assert _chat(port) in ("length", "stop")

    # Restart the head (GCS, Serve controller, the head's proxy and replicas): the worker keeps answering.
    engine = app.models[0].deployment_name()
    on_worker = {rid for rid, node in cluster.replicas(app, engine).items() if node == worker_id}
    cluster.head.kill()
    for _ in range(4):  # the head's replica is gone: the ingress retries a request routed to it
        assert _chat(cluster.ports["worker_http"]) in ("length", "stop")
    old_head_id = head_id

    def restarted() -> bool:
        """The restarted GCS knows the new head and the worker (reconnected), and no longer the old head."""
        head, worker = cluster.node_ids()
        return head != old_head_id and worker == worker_id

    cluster.head.restart(restarted, 300)
    head_id, _ = cluster.node_ids()
    assert len(cluster.alive_nodes()) == 2
    wait_for(lambda: len(cluster.engine_nodes(app)) == 2, START_TIMEOUT_S, "the head's engine replica to be replaced")
    assert on_worker <= set(cluster.replicas(app, engine)), "the controller recovered the app, not redeployed it"
    assert cluster.engine_nodes(app) == sorted([head_id, worker_id])
    for port in (cluster.ports["head_http"], cluster.ports["worker_http"]):
        assert wait_for(lambda port=port: _chat(port), 120, f"an answer through port {port}") in ("length", "stop")

    # Lose the worker node: the head's proxy keeps answering, and the lost replica comes back on the head.
    cluster.worker.kill()
    wait_for(lambda: len(cluster.alive_nodes()) == 1, 120, "the worker node to be declared dead")
    assert wait_for(lambda: _chat(cluster.ports["head_http"]), 120, "an answer through the head") in ("length", "stop")
    wait_for(lambda: cluster.engine_nodes(app) == [head_id, head_id], START_TIMEOUT_S, "both replicas on the head")
    for _ in range(4):
        assert _chat(cluster.ports["head_http"]) in ("length", "stop")

"""The production control plane is closed: Ray token auth on every node, the dashboard on loopback, Redis behind
an ACL, IMDSv2, separate IAM roles, and on Kubernetes non-root pods, NetworkPolicies and a pinned image."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from config import AppConfig
from tests.paths import REPO_ROOT
from tools.redis_acl import acl_text

SECRETS = "/run/dflash-secrets"


CLUSTERS = ["cluster.yaml", "cluster-local.yaml"]


def _cluster(name: str = "cluster.yaml") -> dict:
    return yaml.safe_load((REPO_ROOT / name).read_text())


def _k8s() -> dict[str, dict]:
    docs = yaml.safe_load_all((REPO_ROOT / "k8s" / "rayservice.yaml").read_text())
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def _docker_env(cfg: dict) -> dict[str, str]:
    env = {}
    for option in cfg["docker"]["run_options"]:
        flag, _, value = option.partition(" ")
        if flag == "-e":
            name, _, val = value.partition("=")
            env[name] = val
    return env


def _mounts(cfg: dict) -> dict[str, str]:
    """Container path -> host path:mode of every ``-v`` option."""
    mounts = {}
    for option in cfg["docker"]["run_options"]:
        flag, _, value = option.partition(" ")
        if flag == "-v":
            host, container, *mode = value.split(":")
            mounts[container] = f"{host}:{':'.join(mode)}"
    return mounts


def _init_commands(cfg: dict, node_type: str) -> str:
    """What ``ray up`` runs on the host of ``node_type`` before Docker: the head takes the top-level list,
    a worker type its own list where it has one (Ray's NodeUpdater)."""
    if node_type == cfg["head_node_type"]:
        return " ".join(cfg["initialization_commands"])
    own = cfg["available_node_types"][node_type].get("initialization_commands")
    return " ".join(cfg["initialization_commands"] if own is None else own)


def _ssm_parameters(cfg: dict, node_type: str) -> set[str]:
    """The SSM parameters the host of ``node_type`` reads: named ones, and those of the secrets loop."""
    commands = _init_commands(cfg, node_type)
    names = set(re.findall(r"--name /dflash-serve/([\w-]+)", commands))
    for loop in re.findall(r"for p in ([^;]+); do [^;]*--name /dflash-serve/\$p --with-decryption", commands):
        names |= set(loop.split())
    return names


@pytest.mark.parametrize("name", CLUSTERS)
def test_every_ray_process_runs_with_token_auth_from_a_mounted_secret(name: str):
    cfg = _cluster(name)
    env = _docker_env(cfg)  # docker run -e: every process in the container, `docker exec` (ray start) included
    assert env["RAY_AUTH_MODE"] == "token"
    token = Path(env["RAY_AUTH_TOKEN_PATH"])
    assert "RAY_AUTH_TOKEN" not in env  # the token itself never appears in the config
    assert str(token.parent) == SECRETS and _mounts(cfg)[SECRETS].endswith(":ro")


def test_aws_nodes_fetch_the_ray_token_from_ssm():
    cfg = _cluster()
    for node_type in cfg["available_node_types"]:
        assert "ray-auth-token" in _ssm_parameters(cfg, node_type), node_type
        assert "--with-decryption" in _init_commands(cfg, node_type) and "chmod 600" in _init_commands(cfg, node_type)
        assert "docker" not in cfg["available_node_types"][node_type]  # a per-type docker block replaces run_options


@pytest.mark.parametrize("name", CLUSTERS)
def test_dashboard_and_jobs_api_listen_on_loopback_only(name: str):
    head_start = " ".join(_cluster(name)["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start


@pytest.mark.parametrize("name", CLUSTERS)
def test_redis_requires_acl_users_and_is_not_open_to_the_world(name: str):
    cfg = _cluster(name)
    head_start = " ".join(cfg["head_start_ray_commands"])
    (redis,) = re.findall(r"redis-server .*?--daemonize yes", head_start)
    assert "--protected-mode yes" in redis and "--protected-mode no" not in redis
    (bind,) = re.findall(r"--bind (.*?) --", redis)
    assert "0.0.0.0" not in bind and "127.0.0.1" in bind.split()
    acl_file = re.search(r"--out (\S+)", head_start)[1]  # tools.redis_acl writes it before Redis starts
    assert f"--aclfile {acl_file}" in redis
    assert "--requirepass" not in redis and "--user " not in redis  # no password on a command line of Redis
    assert f"--gcs-password-file {SECRETS}/redis-gcs-password" in head_start
    assert f"--app-password-file {SECRETS}/redis-app-password" in head_start
    # Ray's GCS logs in as ray-gcs, its password read from the mounted file, not written into cluster.yaml.
    assert "--redis-username=ray-gcs" in head_start
    assert f'--redis-password="$(cat {SECRETS}/redis-gcs-password)"' in head_start


def test_each_node_fetches_only_the_secrets_its_role_may_read():
    cfg = _cluster()
    common = {"hf-token", "ray-auth-token", "redis-app-password", "target-group-arn"}
    assert _ssm_parameters(cfg, "head") == common | {"redis-gcs-password"}
    assert _ssm_parameters(cfg, "gpu_b300") == common  # the worker role may not read the GCS password


def test_imdsv2_is_required_on_every_node_type():
    cfg = _cluster()
    for name, node_type in cfg["available_node_types"].items():
        options = node_type["node_config"]["MetadataOptions"]
        assert options["HttpTokens"] == "required", name
        assert options["HttpPutResponseHopLimit"] == 1, name
    # The one metadata call on the hosts uses a session token (IMDSv2).
    register = _init_commands(cfg, "gpu_b300")
    assert "latest/api/token" in register and "X-aws-ec2-metadata-token:" in register


def test_head_and_workers_have_separate_instance_profiles():
    types = _cluster()["available_node_types"]
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Name"] for name, t in types.items()}
    assert profiles == {"head": "dflash-serve-head", "gpu_b300": "dflash-serve-worker"}
    deploy = (REPO_ROOT / "docs" / "deploy.md").read_text()
    for profile in profiles.values():
        assert f"--instance-profile-name {profile}" in deploy  # the guide creates both
    assert '"ec2:*"' not in deploy


@pytest.mark.parametrize("name", CLUSTERS)
def test_cluster_yaml_holds_no_secret(name: str):
    text = (REPO_ROOT / name).read_text()
    assert not re.search(r"--redis-password=(?!\"\$\(cat )", text)
    assert not re.search(r"RAY_AUTH_TOKEN=|requirepass|hf_[A-Za-z0-9]{10,}", text)


def test_production_app_reads_its_redis_password_from_a_file():
    app = AppConfig.from_yaml(REPO_ROOT / "serve_app" / "configs" / "gemma4-dflash-b300.yaml")
    assert app.redis_password_file == f"{SECRETS}/redis-app-password"
    assert app.redis_url is not None
    assert re.fullmatch(r"redis://app@dflash-redis:6380/1", app.redis_url)  # a user, no password
    import redis

    # redis-py takes the user from the URL and the password from `password=` (deployments/redis_auth.py).
    kwargs = redis.ConnectionPool.from_url(app.redis_url, password="from-file").connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("app", "from-file", 1)
    # Every node mounts that file where the config says.
    assert _mounts(_cluster())[SECRETS].startswith("/home/ubuntu/.dflash-secrets")


# -- Kubernetes -------------------------------------------------------------------------------------------


def _pod_specs() -> dict[str, dict]:
    docs = _k8s()
    cluster = docs["RayService/dflash-serve"]["spec"]["rayClusterConfig"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    specs |= {g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]}
    specs["redis"] = docs["Deployment/dflash-redis"]["spec"]["template"]["spec"]
    return specs


@pytest.mark.parametrize("pod", ["head", "gpu-b300", "redis"])
def test_every_k8s_container_runs_unprivileged(pod: str):
    spec = _pod_specs()[pod]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    for container in spec["containers"]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False, container["name"]
        assert ctx["capabilities"]["drop"] == ["ALL"], container["name"]
        assert not ctx.get("privileged"), container["name"]
    if pod != "redis":
        assert spec["securityContext"]["runAsUser"] == 1000
    autoscaler = _k8s()["RayService/dflash-serve"]["spec"]["rayClusterConfig"]["autoscalerOptions"]
    assert autoscaler["securityContext"]["allowPrivilegeEscalation"] is False


def test_k8s_images_are_pinned_by_digest():
    for pod, spec in _pod_specs().items():
        for container in spec["containers"]:
            assert "@sha256:" in container["image"], (pod, container["name"])


def test_k8s_ray_token_auth_and_redis_passwords_come_from_secrets():
    docs = _k8s()
    cluster = docs["RayService/dflash-serve"]["spec"]["rayClusterConfig"]
    assert cluster["authOptions"]["mode"] == "token"  # KubeRay injects RAY_AUTH_MODE/RAY_AUTH_TOKEN everywhere
    gcs = cluster["gcsFaultToleranceOptions"]
    assert gcs["redisUsername"] == {"value": "ray-gcs"}
    assert gcs["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "dflash-redis"
    app = yaml.safe_load(docs["RayService/dflash-serve"]["spec"]["serveConfigV2"])["applications"][0]["args"]["app"]
    password_dir = str(Path(app["redis_password_file"]).parent)
    for pod in ("head", "gpu-b300"):
        spec = _pod_specs()[pod]
        (container,) = spec["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == password_dir]
        assert mount["readOnly"] is True
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == "dflash-redis"
        assert {i["path"] for i in volume["secret"]["items"]} == {Path(app["redis_password_file"]).name}
    for spec in _pod_specs().values():
        for container in spec["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert "RAY_AUTH_TOKEN" not in env and "REDIS_PASSWORD" not in env, container["name"]
    assert "requirepass" not in (REPO_ROOT / "k8s" / "rayservice.yaml").read_text()


def test_k8s_redis_acl_is_the_one_tools_redis_acl_writes(tmp_path: Path):
    """The Redis pod writes its ACL with sh (no Python in the redis image): the same file as cluster.yaml's."""
    (redis,) = _pod_specs()["redis"]["containers"]
    assert redis["command"] == ["sh", "-c"]
    script = redis["args"][0]
    assert "--aclfile /data/users.acl" in script and "--protected-mode yes" in script
    (tmp_path / "redis-gcs-password").write_text("gcs-secret\n")
    (tmp_path / "redis-app-password").write_text("app-secret\n")
    write_acl = script.split(" && exec ")[0].replace(SECRETS, str(tmp_path)).replace("/data", str(tmp_path))
    subprocess.run(["sh", "-c", write_acl], check=True, timeout=10)
    assert (tmp_path / "users.acl").read_text() == acl_text("gcs-secret", "app-secret")


def test_k8s_network_policies_open_only_the_proxy_port_to_the_outside():
    docs = _k8s()
    ray_labels = _k8s()["RayService/dflash-serve"]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    ray_labels = ray_labels["metadata"]["labels"]
    workers = docs["RayService/dflash-serve"]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert all(g["template"]["metadata"]["labels"] == ray_labels for g in workers)
    ray = docs["NetworkPolicy/dflash-serve-ray"]["spec"]
    assert ray["podSelector"]["matchLabels"] == ray_labels and ray["policyTypes"] == ["Ingress"]
    for rule in ray["ingress"]:
        sources = rule.get("from")
        if sources is None:  # open to any source: only the Serve proxies' port
            assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
        elif any("namespaceSelector" in s for s in sources):  # the operator, Prometheus: named ports only
            assert {p["port"] for p in rule["ports"]} <= {8265, 8000, 8080}
        else:  # this RayService's own pods: any port (GCS, raylet, object manager, workers)
            assert sources == [{"podSelector": {"matchLabels": ray_labels}}]
    redis = docs["NetworkPolicy/dflash-redis"]["spec"]
    assert redis["podSelector"]["matchLabels"] == docs["Deployment/dflash-redis"]["spec"]["selector"]["matchLabels"]
    (rule,) = redis["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": ray_labels}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6380}]


def test_k8s_load_balancer_is_https_only():
    lb = _k8s()["Service/dflash-serve-lb"]
    assert [p["port"] for p in lb["spec"]["ports"]] == [443]
    annotations = lb["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-ports"] == "443"
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-cert"].startswith("arn:aws:acm:")
    assert "TLS13" in annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-negotiation-policy"]

"""CPU time per process role, so a benchmark can say where each generated token's CPU goes.

Roles are told apart by the titles the processes give themselves: Ray names its actors
``ray::ProxyActor`` and ``ray::ServeReplica:<app>:<deployment>``, vLLM names its engine process
``VLLM::EngineCore`` (setproctitle). Bare ``vllm serve`` is its API server process plus that engine core.
A snapshot sums user + system CPU seconds of every live process in each role; the difference of two
snapshots around a run, divided by the tokens it generated, is CPU per token per role (bench/overhead.py).
"""

from __future__ import annotations

import psutil

ROLES = ("serve_proxy", "ingress", "engine_replica_api", "engine_core", "ray_control", "vllm_api_server")


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline()) or p.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def role_of(title: str, bare_vllm_pids: frozenset[int] = frozenset(), pid: int = -1) -> str | None:
    """The role a process with this title (cmdline) plays, or None when it is not on the serving path."""
    if "EngineCore" in title:
        return "engine_core"
    if pid in bare_vllm_pids:
        return "vllm_api_server"
    if "ray::ProxyActor" in title or "haproxy" in title:  # Serve's HAProxy mode: HAProxy fronts the ingress
        return "serve_proxy"
    if "ray::ServeReplica:" in title:
        return "ingress" if ":Ingress" in title else "engine_replica_api"
    if "ray::" in title or "raylet" in title or "gcs_server" in title or "dashboard" in title:
        return "ray_control"
    return None


def _sides(roots: dict[str, int]) -> dict[str, list[tuple[str, psutil.Process]]]:
    """Per side (``roots``: side -> root pid), its processes on the serving path with their roles.

    Sides are taken in order and a process belongs to the first side whose tree holds it, so a root that
    is this process (which started Ray, and also started ``vllm serve``) comes last. This process itself
    (the load client) is never counted.
    """
    me = psutil.Process().pid
    claimed: set[int] = {me}
    out: dict[str, list[tuple[str, psutil.Process]]] = {}
    for side, root_pid in roots.items():
        try:
            root = psutil.Process(root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        bare = frozenset({root_pid}) if root_pid != me else frozenset()
        out[side] = []
        for p in procs:
            if p.pid in claimed:
                continue
            claimed.add(p.pid)
            if (role := role_of(_cmdline(p), bare, p.pid)) is not None:
                out[side].append((role, p))
    return out


def snapshot(roots: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per side (``roots``: side -> root pid), CPU seconds by role; a side is its root and its descendants."""
    out: dict[str, dict[str, float]] = {}
    for side, procs in _sides(roots).items():
        totals = dict.fromkeys(ROLES, 0.0)
        for role, p in procs:
            try:
                t = p.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            totals[role] += t.user + t.system
        out[side] = totals
    return out


def pids_by_role(root_pid: int) -> dict[str, list[int]]:
    """The pids of each role under ``root_pid`` (this process's own tree for our stack), for a profiler."""
    out: dict[str, list[int]] = {}
    for role, p in _sides({"": root_pid})[""]:
        out.setdefault(role, []).append(p.pid)
    return out

"""A real multi-node Ray cluster on one machine, for tests: ``ray start`` per node on free ports.

Each node is one ``ray start --block`` in a session of its own, so every process of the node (GCS,
raylet, agents, workers, the Serve proxies and replicas, the vLLM engine processes under them) is a
descendant of a PID we hold. Stopping a node kills exactly that tree, as losing the machine would;
``ray stop`` is never used (it kills every Ray on the machine, other people's included).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

import psutil

from tests.paths import REPO_ROOT
from tools.ports import free_port
from tools.serve import ray_environment

T = TypeVar("T")

RAY = str(REPO_ROOT / ".venv" / "bin" / "ray")


class RayNode:
    """One node: ``ray start --block`` with explicit ports, its own resources and environment."""

    def __init__(
        self,
        name: str,
        *,
        temp_dir: Path,
        log_dir: Path,
        num_cpus: float,
        resources: dict[str, float],
        head_address: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.is_head = head_address is None
        self.gcs_port = free_port() if self.is_head else None
        self.dashboard_port = free_port() if self.is_head else None
        self.address = f"127.0.0.1:{self.gcs_port}" if self.is_head else head_address
        argv = [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
        argv += [f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}", "--object-store-memory=100000000"]
        for flag in (
            "node-manager-port",
            "object-manager-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        ):
            argv.append(f"--{flag}={free_port()}")
        argv.append(f"--temp-dir={temp_dir}")
        if self.is_head:
            argv += ["--head", f"--port={self.gcs_port}"]
            argv += [f"--ray-client-server-port={free_port()}", "--include-dashboard=true"]
            argv += ["--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
        else:
            argv += [f"--address={head_address}"]
        self._argv = argv
        self._temp_dir = temp_dir
        self._env = {**os.environ, **ray_environment(), **(env or {})}
        self._log_path = log_dir / f"ray-start-{name}.log"
        self._log: IO[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool], timeout_s: float, attempts: int = 4, recover: bool = False) -> None:
        """Start the node and wait until ``ready()``; start it again if it dies on the way.

        On a busy machine a raylet may give up waiting for its dashboard agent's port file (Ray 2.60 waits
        15 s; the agent took 20 s here under load) and the node exits; that is the machine's load, not what
        the tests check, and the next attempt finds the agent's imports in the page cache. A retried
        head gets a fresh GCS namespace in Redis so it does not "recover" the failed attempt's state,
        unless ``recover``: a restarted head must find its cluster's state there.
        """
        for attempt in range(attempts):
            env = dict(self._env)
            if attempt and not recover and "RAY_external_storage_namespace" in env:
                env["RAY_external_storage_namespace"] += f"-{attempt}"
            self._log = open(self._log_path, "ab")  # closed in kill()
            self.proc = subprocess.Popen(
                self._argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
            )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if ready():
                        return
                except Exception:  # noqa: BLE001  (the node is coming up: its APIs may fail for a while)
                    pass
                time.sleep(2)
            self.kill()
        raise RuntimeError(f"node {self.name} did not start in {attempts} attempts; see {self._log_path}")

    def restart(self, ready: Callable[[], bool], timeout_s: float) -> None:
        """Start a killed head again on its ports, as a head pod restarts: on a fresh disk.

        Its old address file must go: ``ray start --head`` refuses to start when the file names its own
        address and a process on this machine still names that GCS (the worker's raylet does, here).
        """
        assert self.is_head and self.proc is None, "restart a head node after kill()"
        (self._temp_dir / "ray_current_cluster").unlink(missing_ok=True)
        self.start(ready, timeout_s, recover=True)

    @property
    def dashboard_url(self) -> str:
        assert self.is_head, "the dashboard runs on the head node"
        return f"http://127.0.0.1:{self.dashboard_port}"

    def processes(self) -> list[psutil.Process]:
        """The node's processes: ``ray start`` and everything under it."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the node's whole process tree (a machine lost, not a graceful stop)."""
        for _ in range(5):  # workers may be forking while we kill: sweep until nothing is left
            procs = self.processes()
            if not procs:
                break
            for p in procs:
                try:
                    p.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(procs, timeout=10)
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything reparented but still in the node's session
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.proc = None
        if self._log is not None:
            self._log.close()


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, period_s: float = 2.0) -> T:
    """Poll ``predicate()`` until it returns something truthy; its last exception explains a timeout."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001  (the cluster is coming up: anything may fail for a while)
            last = exc
        time.sleep(period_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}; last error: {last!r}")

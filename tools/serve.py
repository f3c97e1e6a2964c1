"""``make serve``: start a local Ray, deploy the app, serve the OpenAI endpoint in the foreground.

Everything it starts (Ray, Serve, the engine processes) is stopped on Ctrl-C or SIGTERM. The
environment (``PORT``, ``CONFIG``, ``SPECULATIVE``) is read here, at the edge, and turned into
build arguments; nothing below reads it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

    from config import AppConfig

logger = logging.getLogger("dflash_serve.serve")

SNIPPET = """
dflash-serve is up: {url}
  models: {models}

  curl {url}/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 32}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{url}', api_key='none'); \\
print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hello!'}}], \\
max_tokens=32).choices[0].message.content)"

  metrics: http://{host}:{port}/metrics    health: http://{host}:{port}/health
Press Ctrl-C to stop.
"""


# Each Ray worker in its own process group, killed as a group when the worker exits: an engine replica that
# crashes or is SIGKILLed takes its vLLM engine core and workers with it (otherwise they are reparented to
# init and keep the GPU's memory). Ray 2.60's default, pinned here as cluster.yaml and k8s/rayservice.yaml
# pin it for `ray start` (RAY_process_group_cleanup_enabled=true).
RAY_SYSTEM_CONFIG = {"process_group_cleanup_enabled": True}


def ray_environment() -> dict[str, str]:
    """What every process Ray starts here needs in its environment, as the image's environment has it under
    `ray start`: how Serve runs our replicas and proxies (deployments/serve_environment.py)."""
    from deployments.serve_environment import SERVE_ENVIRONMENT

    return dict(SERVE_ENVIRONMENT)


def start_ray(num_cpus: int | None) -> None:
    import ray

    # Inherited by the GCS, the raylet and every worker it starts; a value already set (a benchmark trying
    # another Serve mode) is kept.
    for name, value in ray_environment().items():
        os.environ.setdefault(name, value)
    # Logical CPUs: engine replicas reserve whole CPUs but mostly wait on their engine process.
    ray.init(
        address="local",
        num_cpus=num_cpus or max(4, os.cpu_count() or 1),
        include_dashboard=False,
        logging_level="WARNING",
        _system_config=RAY_SYSTEM_CONFIG,
    )


def deploy(config_path: str, speculative: str | None, host: str, port: int) -> list[str]:
    """Start Serve and deploy the app; returns the served model ids once all replicas are ready."""
    from config import BuildArgs

    config = BuildArgs.model_validate({"config": config_path, "speculative": speculative}).resolve()
    return deploy_config(config, host, port)


def deploy_config(config: AppConfig, host: str, port: int) -> list[str]:
    """Start Serve on ``host:port`` and deploy ``config``; returns once every replica is ready."""
    from ray import serve

    from serve_app.build import build_from_config

    serve.start(http_options={"host": host, "port": port})
    t0 = time.monotonic()
    serve.run(build_from_config(config), name=config.name, route_prefix="/")
    logger.info("application ready in %.1f s", time.monotonic() - t0)
    return [m.id for m in config.models]


@contextmanager
def serving(config: AppConfig, port: int, host: str = "127.0.0.1", num_cpus: int | None = None) -> Iterator[str]:
    """A fresh local Ray serving ``config``, for benchmarks and tools; yields the base URL, stops it all after."""
    start_ray(num_cpus)
    try:
        deploy_config(config, host, port)
        yield f"http://{host}:{port}"
    finally:
        stop()


def _ray_process_tree() -> list[psutil.Process]:
    """The processes ``ray.init`` started here (GCS, raylet, agents) and all under them: workers, engines."""
    import psutil

    tree: list[psutil.Process] = []
    for child in psutil.Process().children():
        try:
            if "/ray/" in " ".join(child.cmdline()):
                tree += [child, *child.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return tree


def stop() -> None:
    """Shut Serve and Ray down, then kill whatever this process started that outlived them.

    Serve's controller gives up after 30 s when replicas are slow to stop, and ``ray.shutdown`` then
    stops the raylet with them; with the raylet gone nothing kills a dead replica's process group
    (RAY_SYSTEM_CONFIG), so vLLM's engine-core and worker processes would be left running, holding
    memory and a core.
    """
    import psutil
    import ray
    from ray import serve

    started = _ray_process_tree()
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        survivors: dict[psutil.Process, str] = {}
        for proc in started:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:  # a zombie has exited: only not yet reaped
                    survivors[proc] = proc.name()
                    proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(survivors), timeout=10)
        if survivors:
            named = ", ".join(f"{name}[{proc.pid}]" for proc, name in survivors.items())
            logger.warning("killed %d processes that outlived Ray's shutdown: %s", len(survivors), named)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("CONFIG", "serve_app/configs/local.yaml"))
    parser.add_argument("--speculative", default=os.environ.get("SPECULATIVE") or None, help="on/off override")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for Ray")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        stopping.set()
        raise KeyboardInterrupt(signal.Signals(signum).name)

    try:
        start_ray(opts.num_cpus)
        # After ray.init, which installs handlers of its own that would skip our clean shutdown.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        models = deploy(opts.config, opts.speculative, opts.host, opts.port)
        url = f"http://{opts.host}:{opts.port}/v1"
        print(
            SNIPPET.format(url=url, host=opts.host, port=opts.port, models=", ".join(models), model=models[0]),
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt as why:
        logger.info("stopping (%s)", why or "interrupt")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop()
        logger.info("stopped; no Ray processes left")
    sys.exit(0)


if __name__ == "__main__":
    main()

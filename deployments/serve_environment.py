"""The environment every Ray process of this app starts with: how Serve runs our deployments and proxies.

Serve reads these when each of its processes starts, so they belong in the environment of ``ray start``:
the image sets them (Dockerfile ``ENV``, checked against this dict by tests/unit/deploy/test_dockerfile.py),
and ``tools/serve.py`` sets them for a local ``ray.init``. Each is measured in docs/benchmarks.md ("Where a
request's first token waits"):

* ``RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0`` and ``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0``: each
  replica runs our code, and the routers of the handles it holds (ours in the ingress), on its own event
  loop, so a streamed chunk crosses no thread inside a replica. Safe for us because nothing of ours blocks
  that loop: prompts render and hash in the ingress's render pool, Redis calls are async.
* ``RAY_SERVE_PROXY_USE_GRPC=1``: the HTTP proxy calls the ingress over Serve's gRPC transport, as the
  ingress calls the engine replicas (``ingress.engine_transport``), not through Ray's object streaming.
* ``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH``: the largest message that transport takes
  (``config.front.SERVE_MESSAGE_BYTES``). Serve's default, 4 MiB, is below the request bodies the ingress
  accepts (``ingress.max_body_bytes``, 8 MiB: an image as a ``data:`` URL): a larger request would reach
  the ingress and then fail on its way to the engine.
* The proxy callback (``deployments/proxy_callback.py``): our header guard and body read-ahead in every proxy.

The first three are settings of Serve's high-throughput mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED``); its
direct ingress behind HAProxy is not among them (it cost more here than it saved).
"""

from __future__ import annotations

from config.front import SERVE_MESSAGE_BYTES
from deployments.proxy_callback import PROXY_CALLBACK, PROXY_CALLBACK_ENV

SERVE_ENVIRONMENT: dict[str, str] = {
    PROXY_CALLBACK_ENV: PROXY_CALLBACK,
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_PROXY_USE_GRPC": "1",
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(SERVE_MESSAGE_BYTES),
}

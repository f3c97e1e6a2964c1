"""What every Serve HTTP proxy runs of ours, ahead of Serve's own middleware.

Serve loads a proxy callback named by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` in each proxy
(ray/serve/_private/http_util.py ``_apply_middlewares``; its middlewares wrap Serve's request-id
middleware): the environment of ``ray start`` names it (the image sets it), or of a local ``ray.init``
(``tools/serve.py``). Two middlewares: the client-header guard (``deployments/proxy_headers.py``) and the
body read-ahead (``deployments/proxy_body.py``).
"""

from __future__ import annotations

from starlette.middleware import Middleware

from deployments.proxy_body import BodyAhead
from deployments.proxy_headers import ClientHeaderGuard

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "deployments.proxy_callback:proxy_middlewares"


def proxy_middlewares() -> list[Middleware]:
    """Serve's proxy callback: the header guard first (the outermost), then the body read-ahead."""
    return [Middleware(ClientHeaderGuard), Middleware(BodyAhead)]

"""What to log of an exception on the request path: its class and its cause's, never their messages.

A message can carry the client's own text: vLLM's validation errors quote what they refused (a schema, a
regex, a stop string), a chat template's errors quote the messages it rendered, and a ``RayTaskError``
carries the remote traceback with the messages of every exception in it. Logs are kept, shipped and read
by people who must not see prompts, so the request path logs the kind of a failure and a request id; the
client gets the message itself in its response.
"""

from __future__ import annotations


def error_kind(exc: BaseException) -> str:
    """``Class`` of ``exc``, with ``from Cause`` for its direct cause or context (one level: enough to tell
    a replica's death from a request's failure in a log line)."""
    cause = exc.__cause__ or exc.__context__
    kind = type(exc).__name__
    return f"{kind} from {type(cause).__name__}" if cause is not None else kind

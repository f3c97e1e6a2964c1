"""dflash-serve application: the config model and the Serve application builder.

The builder is imported lazily so that ``config`` stays importable without Ray or vLLM
(tools and pure tests load configs without starting anything).
"""

from typing import Any

from config import AppConfig, BuildArgs, ModelConfig

__all__ = ["AppConfig", "BuildArgs", "ModelConfig", "build_app", "build_from_config"]


def __getattr__(name: str) -> Any:
    if name in ("build_app", "build_from_config"):
        from serve_app import build

        return getattr(build, name)
    raise AttributeError(f"module 'serve_app' has no attribute {name!r}")

"""The production deployment the simulators simulate: ``gemma4-dflash-b300.yaml``, read rather than copied.

Routing weights, the drafter's K, the engine's batch limits and the router's prefix bound all come from
the file that is deployed, so a value changed there reaches the simulated results too.
"""

from __future__ import annotations

import functools
from pathlib import Path

from config import AppConfig, ModelConfig

B300_CONFIG = Path(__file__).resolve().parent.parent / "serve_app" / "configs" / "gemma4-dflash-b300.yaml"


@functools.cache
def production_app() -> AppConfig:
    return AppConfig.from_yaml(B300_CONFIG)


def production_model() -> ModelConfig:
    """The one model the production config serves (gemma-4-26B-A4B-it with its DFlash drafter)."""
    return production_app().models[0]

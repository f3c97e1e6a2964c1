"""The strict base of every config model, and the on/off switch spelling they share."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def on_off(value: Any) -> Any:
    """Accept the spellings people type in YAML and on the command line for a switch.

    YAML 1.1 already reads ``off``/``on`` as booleans; ``serve run ... speculative=off`` passes the
    string, so both reach here and mean the same thing.
    """
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("on", "true", "1", "yes"):
            return True
        if lowered in ("off", "false", "0", "no"):
            return False
    return value

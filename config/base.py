"""The strict base of every config model, and the spellings they share (on/off switches, hub commits)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints

# A Hugging Face repository's commit: what a revision must be to pin anything. A branch or tag (``main``,
# ``v1``) moves under a running fleet, so replicas started a week apart would serve different weights.
HubCommit = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]


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

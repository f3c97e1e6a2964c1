"""Redis's password, from the secret file the config names (``AppConfig.redis_password_file``).

Read when a client connects rather than carried in the config: the config is printed, generated into the
serve config, and stored by Serve, and none of those may hold the password.
"""

from __future__ import annotations

from pathlib import Path


def redis_password(password_file: str | None) -> str | None:
    """The password in ``password_file`` (surrounding whitespace dropped); None when no file is configured."""
    if password_file is None:
        return None
    return Path(password_file).read_text(encoding="utf-8").strip()

"""Where the tests find the repository's files (every tier imports these; none is a fixture)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "serve_app" / "configs"
LOCAL_CONFIG = CONFIG_DIR / "local.yaml"
# AppConfig files; serve-*.yaml are `serve deploy` configs generated from them (tests/unit/tools/test_serve_config.py).
CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("serve-"))

"""The `serve deploy` configs: generated from AppConfig, valid for Serve's schema, in sync with their source."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from config import AppConfig
from tests.paths import CONFIG_DIR
from tools.serve_config import check, main, serve_config, validate_serve_config

B300_APP = CONFIG_DIR / "gemma4-dflash-b300.yaml"
B300_SERVE = CONFIG_DIR / "serve-b300.yaml"


def test_shipped_serve_config_is_valid_and_generated_from_its_app_config():
    assert check(str(B300_APP), str(B300_SERVE), "0.0.0.0", 8000) == []
    assert main([str(B300_APP), "--check", str(B300_SERVE)]) == 0


def test_serve_config_carries_the_app_config_and_a_proxy_per_node():
    data = yaml.safe_load(B300_SERVE.read_text())
    assert data["proxy_location"] == "EveryNode"
    (application,) = data["applications"]
    assert application["import_path"] == "serve_app:build_app"
    (app,) = validate_serve_config(data)
    assert app == AppConfig.from_yaml(B300_APP)
    assert app.redis_url is not None  # the routers share state across ingress replicas and nodes
    # The LB's idle timeout is set to the request timeout; the proxies must keep connections longer.
    assert data["http_options"]["keep_alive_timeout_s"] > app.ingress.request_timeout_s


def test_check_catches_a_hand_edit(tmp_path: Path):
    data = yaml.safe_load(B300_SERVE.read_text())
    data["applications"][0]["args"]["app"]["models"][0]["replicas"]["max_replicas"] = 99
    edited = tmp_path / "serve.yaml"
    edited.write_text(yaml.safe_dump(data))
    (problem,) = check(str(B300_APP), str(edited), "0.0.0.0", 8000)
    assert "regenerate" in problem
    assert main([str(B300_APP), "--check", str(edited)]) == 1


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d["applications"][0]["args"]["app"]["models"][0].update(engine={"max_model_length": 1}), "invalid"),
        (lambda d: d.update(proxy_location="Everywhere"), "invalid"),
        (lambda d: d["applications"][0].update(import_path="other:app"), "import_path"),
    ],
)
def test_check_rejects_invalid_configs(tmp_path: Path, edit, needle: str):
    data = serve_config(AppConfig.from_yaml(B300_APP))
    edit(data)
    bad = tmp_path / "serve.yaml"
    bad.write_text(yaml.safe_dump(data))
    (problem,) = check(str(B300_APP), str(bad), "0.0.0.0", 8000)
    assert needle in problem

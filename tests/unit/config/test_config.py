"""AppConfig: the shipped YAML files validate, and bad configs fail at load time with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from config import AppConfig, BuildArgs
from tests.paths import CONFIGS


def _minimal(**model: object) -> dict:
    return {"models": [{"id": "m", "target": "org/target", **model}]}


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"local.yaml", "gemma4-dflash-b300.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path):
    cfg = AppConfig.from_yaml(path)
    assert cfg.models and all(m.speculative is not None for m in cfg.models)


def test_b300_config_is_the_seed_command():
    cfg = AppConfig.from_yaml(next(p for p in CONFIGS if p.name == "gemma4-dflash-b300.yaml"))
    m = cfg.models[0]
    assert m.target == "google/gemma-4-26B-A4B-it"
    assert m.speculative.draft_model == "z-lab/gemma-4-26B-A4B-it-DFlash"
    assert m.speculative.num_speculative_tokens == 15
    assert m.speculative.attention_backend == "flash_attn"
    assert m.engine.attention_backend == "triton_attn"
    assert m.engine.max_num_batched_tokens == 32768
    assert m.replicas.num_gpus == 1


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (
            _minimal(
                engine={"max_num_seqs": 64, "max_num_batched_tokens": 512},
                speculative={"draft_model": "d", "num_speculative_tokens": 15},
            ),
            "max_num_batched_tokens",
        ),
        (_minimal(replicas={"min_replicas": 3, "max_replicas": 2}), "min_replicas"),
        (_minimal(engine={"max_model_len": "long"}), "max_model_len"),
        (_minimal(engine={"max_model_length": 10}), "max_model_length"),
        ({"models": []}, "models"),
        ({"models": [{"id": "a", "target": "t"}, {"id": "a", "target": "t"}]}, "duplicate"),
        (_minimal(speculative={"draft_model": "d", "method": "eagle"}), "method"),
        ({**_minimal(), "auth": {"api_key_sha256": ["not-a-digest"]}}, "api_key_sha256"),
    ],
)
def test_bad_configs_are_rejected(data: dict, needle: str):
    with pytest.raises(ValidationError) as info:
        AppConfig.model_validate(data)
    assert needle in str(info.value)


@pytest.mark.parametrize(("value", "expected"), [("off", False), ("on", True), (False, False), ("true", True)])
def test_speculative_switch(tmp_path: Path, value: object, expected: bool):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_minimal(speculative={"draft_model": "d", "num_speculative_tokens": 3})))
    cfg = BuildArgs.model_validate({"config": str(path), "speculative": value}).resolve()
    assert cfg.speculative is expected
    assert all((m.speculative is not None) is expected for m in cfg.effective_models())


def test_yaml_off_is_false(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("speculative: off\nmodels: [{id: m, target: t, speculative: {draft_model: d}}]\n")
    cfg = AppConfig.from_yaml(path)
    assert cfg.effective_models()[0].speculative is None


def test_build_args_need_one_source():
    with pytest.raises(ValidationError):
        BuildArgs.model_validate({})
    with pytest.raises(ValidationError):
        BuildArgs.model_validate({"config": "x.yaml", "app": _minimal()})
    assert BuildArgs.model_validate({"app": _minimal()}).resolve().models[0].id == "m"


def test_redis_keys_and_rate_limits_need_redis():
    for auth in ({"redis_keys": True}, {"rate_limit_per_s": 5}):
        with pytest.raises(ValidationError, match="redis_url"):
            AppConfig.model_validate({**_minimal(), "auth": auth})
        cfg = AppConfig.model_validate({**_minimal(), "auth": auth, "redis_url": "redis://127.0.0.1:1/0"})
        assert cfg.auth.on_redis_error == "closed"  # the documented default
    assert not AppConfig.model_validate(_minimal()).auth.enabled  # no key source: open


def test_an_open_endpoint_must_be_asked_for():
    from serve_app.build import build_from_config

    open_app = AppConfig.model_validate(_minimal())
    with pytest.raises(ValueError, match="allow_anonymous"):
        open_app.auth.require_key_source()
    with pytest.raises(ValueError, match="no key source"):
        build_from_config(open_app)  # refused before any deployment is made
    AppConfig.model_validate({**_minimal(), "auth": {"allow_anonymous": True}}).auth.require_key_source()
    keyed = {"api_key_sha256": ["0" * 64]}
    AppConfig.model_validate({**_minimal(), "auth": keyed}).auth.require_key_source()
    assert AppConfig.model_validate(_minimal()).auth.protect_metrics  # /metrics needs a key by default


@pytest.mark.parametrize("path", ["serve_app/configs/gemma4-dflash-b300.yaml"])
def test_production_configs_require_keys_and_hide_the_docs(path: str):
    cfg = AppConfig.from_yaml(path)
    assert cfg.auth.enabled and not cfg.auth.allow_anonymous and cfg.auth.protect_metrics
    assert not cfg.ingress.openapi_docs


def test_deployment_names_are_safe_and_distinct():
    cfg = AppConfig.model_validate({"models": [{"id": "org/model.v1", "target": "t"}, {"id": "other", "target": "t"}]})
    names = [m.deployment_name() for m in cfg.models]
    assert names == ["Engine-org-model-v1", "Engine-other"]


def test_builder_takes_serve_args_like_serve_run_and_deploy():
    """Serve turns `key=value` / `args:` into BuildArgs through build_app's annotation."""
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serve_app import build_app

    local = str(next(p for p in CONFIGS if p.name == "local.yaml"))
    app = call_user_app_builder_with_args_if_necessary(build_app, {"config": local, "speculative": "off"})
    assert isinstance(app, Application)
    with pytest.raises(ValidationError):
        call_user_app_builder_with_args_if_necessary(build_app, {"config": local, "speculative": "maybe"})

"""The engine's media backstop (deployments/engine/media_fetch.py): the ingress's media policy in vLLM's terms."""

from __future__ import annotations

from config import MediaConfig
from deployments.engine.media_fetch import NO_HOST, allowed_hosts, fetch_env


def test_no_host_is_allowed_unless_media_is_on_with_domains():
    # vLLM reads an empty list as "any host": with nothing allowed, the engine names a host that cannot exist.
    assert allowed_hosts(MediaConfig()) == [NO_HOST]
    assert allowed_hosts(MediaConfig(enabled=True)) == [NO_HOST]  # data: URLs only
    assert allowed_hosts(MediaConfig(allowed_domains=["cdn.example.com"])) == [NO_HOST]  # media off
    assert allowed_hosts(MediaConfig(enabled=True, allowed_domains=["cdn.example.com"])) == ["cdn.example.com"]
    assert NO_HOST.endswith(".invalid")


def test_fetches_follow_no_redirect_and_are_bounded():
    env = fetch_env(MediaConfig(max_download_mb=8, max_image_pixels=1_000_000))
    assert env == {
        "VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0",
        "VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB": "8",
        "VLLM_MAX_IMAGE_PIXELS": "1000000",
    }

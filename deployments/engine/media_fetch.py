"""What an engine may fetch for a chat's media: its own backstop behind the ingress's check.

The ingress refuses every media URL outside ``ingress.media.allowed_domains`` before an engine sees the
request (``deployments.ingress.validation.check_media``). The engine still fetches what it is given, from a
GPU node on the cluster's network: a redirect from an allowed host, or a request that reached it past the
ingress (another app on the cluster), would be followed to the metadata service or the VPC. So the engine
gets the same policy in vLLM's own terms: only the allowed hosts (vLLM matches them exactly), never a
redirect, bounded downloads and images. With no host allowed, it names one that cannot exist (RFC 2606's
``.invalid``): vLLM reads an empty list as "any host".
"""

from __future__ import annotations

from config import MediaConfig

NO_HOST = "media-fetching-is-off.invalid"


def allowed_hosts(media: MediaConfig) -> list[str]:
    """vLLM's ``allowed_media_domains`` for ``media``."""
    return list(media.allowed_domains) if media.enabled and media.allowed_domains else [NO_HOST]


def fetch_env(media: MediaConfig) -> dict[str, str]:
    """vLLM's media-fetching settings (read from the environment when a request's media is loaded)."""
    return {
        "VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0",
        "VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB": str(media.max_download_mb),
        "VLLM_MAX_IMAGE_PIXELS": str(media.max_image_pixels),
    }

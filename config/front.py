"""The HTTP front: the ingress, its per-model admission, API keys and rate limits."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from config.base import Strict

# The largest message Serve's gRPC transport carries between our processes (deployments/serve_environment.py
# gives every Ray process this limit; Serve's own default, 4 MiB, is below the default body limit). A request
# crosses it whole, with its prompt's token ids; an answer that is not streamed, whole too.
SERVE_MESSAGE_BYTES = 256 * 1024 * 1024


class AuthConfig(Strict):
    """API keys and per-key rate limits (docs/reliability.md).

    Keys are stored as SHA-256 digests only: in this list, and (``redis_keys``) in the app's Redis, where
    ``python -m tools.api_keys`` adds and revokes them. An app with no key source is refused at build time
    unless ``allow_anonymous`` says the open endpoint is meant (local.yaml: a laptop's 127.0.0.1).
    """

    api_key_sha256: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(
        default_factory=list, description="Hex SHA-256 digests of the accepted API keys."
    )
    redis_keys: bool = Field(
        False, description="Also accept the keys stored in the app's Redis (needs redis_url; tools.api_keys)."
    )
    key_cache_s: float = Field(
        30,
        ge=0,
        description="How long an ingress replica trusts a Redis key it verified; a revoked key stops working "
        "within this time.",
    )
    rate_limit_per_s: float | None = Field(
        None,
        gt=0,
        description="Requests per second each key may send (a token bucket in Redis shared by every ingress "
        "replica; needs redis_url). A key's own limit, set with tools.api_keys, overrides it. None: unlimited.",
    )
    rate_limit_burst: int = Field(20, ge=1, description="Requests a key may send at once (the bucket's size).")
    token_budget_per_s: float | None = Field(
        None,
        gt=0,
        description="Tokens per second each key may spend, prompt and output together (a second bucket in Redis "
        "beside the request bucket; needs redis_url). A request takes its bound up front (prompt bytes + "
        "prompts x n x max_tokens) and gets back what its usage shows it did not spend. A key's own budget, set "
        "with tools.api_keys, overrides it. None: unlimited.",
    )
    token_budget_burst: int = Field(
        262_144,
        ge=1,
        description="Tokens a key may hold at once (the budget bucket's size): the largest request it can send.",
    )
    on_redis_error: Literal["open", "closed"] = Field(
        "closed",
        description="When Redis cannot be reached: closed answers 503 for requests that need it (a Redis key, a "
        "rate limit); open admits them without their rate limit, accepting Redis keys this replica has already "
        "verified (never an unknown key). Static keys work either way.",
    )
    fail_open_key_max_age_s: float = Field(
        600,
        ge=0,
        description="With on_redis_error: open, how long after its last check in Redis a key stays accepted "
        "while Redis is unreachable: the longest a key revoked during an outage keeps working.",
    )
    redis_timeout_s: float = Field(
        1.0,
        gt=0,
        le=30,
        description="Longest one Redis call of access control may take (connect, and each read): what a Redis "
        "that stopped answering costs a request, until redis_breaker_failures such calls open the breaker.",
    )
    redis_breaker_failures: int = Field(
        3, ge=1, description="Consecutive Redis failures after which access control stops trying Redis for a while."
    )
    redis_breaker_open_s: float = Field(
        5.0,
        gt=0,
        description="How long Redis is not tried once the breaker opened (requests get on_redis_error's answer at "
        "once instead of after a timeout each); then one trial request decides.",
    )
    protect_metrics: bool = Field(
        True,
        description="Require a key for /metrics too (each scrape fans out to every replica; "
        "observability/prometheus.yml sends one from a credentials file).",
    )
    allow_anonymous: bool = Field(
        False,
        description="Serve without any key source (no api_key_sha256, no redis_keys): only for an endpoint "
        "nobody else can reach. Without it, such an app is refused at build time.",
    )

    @property
    def enabled(self) -> bool:
        """Whether requests must carry a key."""
        return bool(self.api_key_sha256) or self.redis_keys

    def require_key_source(self) -> None:
        """Refuse an open endpoint nobody asked for: the secure default of every app the builder builds."""
        if not self.enabled and not self.allow_anonymous:
            raise ValueError(
                "auth has no key source: set auth.api_key_sha256 or auth.redis_keys (tools.api_keys), or "
                "auth.allow_anonymous: true for an endpoint only you can reach"
            )


class AdmissionConfig(Strict):
    """Per-model admission at each ingress replica: a bounded number in flight, a bounded queue behind them."""

    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="Requests of one model an ingress replica sends to its engines at once; None: what the "
        "model's largest deployment takes (max_replicas x max_ongoing_requests).",
    )
    max_queued: int = Field(
        256, ge=0, description="Requests of one model waiting for a slot; one more is answered 429 at once."
    )
    queue_timeout_s: float = Field(
        30,
        gt=0,
        description="Longest a request waits for a slot before a 503 with Retry-After (also the wait for a "
        "first replica of a model scaled to zero).",
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After (seconds) sent with 429 and 503 answers.")


class RequestLimits(Strict):
    """What one generation request may ask an engine for: every other limit counts requests, these count work.

    A request's output budget is ``prompts × n × max_tokens`` (a missing ``max_tokens`` counts as the
    model's whole context); it may always generate one full context, never more than ``max_output_tokens``
    beyond that. Real clients never meet these defaults; ``n: 4096`` or a 1,024-prompt batch do.
    """

    max_n: int = Field(8, ge=1, description="Most choices (`n`) one request may ask for.")
    max_prompts: int = Field(32, ge=1, description="Most prompts in one completions batch.")
    max_output_tokens: int = Field(
        65536,
        ge=1,
        description="Most tokens one request may ask to generate over all its prompts and choices "
        "(at least the model's max_model_len is always allowed).",
    )
    allow_beam_search: bool = Field(
        False, description="Whether `use_beam_search` is accepted (it runs `n` beams per prompt on the engine)."
    )
    max_text_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Most UTF-8 bytes of text (messages, tools, prompts; media parts apart) in one request: "
        "what the ingress renders and tokenizes for routing and the engine again. The default is 16 bytes a "
        "token over a 262,144-token context (English text averages about 4).",
    )


class MediaConfig(Strict):
    """Which images, audio and video a chat may carry (the multimodal target fetches what a URL names).

    Off by default: an ``image_url`` to the instance metadata service or the VPC would be fetched from a GPU
    node. When enabled, ``data:`` URLs (bounded by ``ingress.max_body_bytes``) are accepted and ``https``
    URLs only on ``allowed_domains``. The ingress decides before anything is fetched; the engines are
    reached only through it.
    """

    enabled: bool = Field(False, description="Accept non-text content parts (images, audio, video) in chats.")
    allowed_domains: list[str] = Field(
        default_factory=list,
        description="Hosts (and their subdomains) https media URLs may name; empty: data: URLs only. The engines "
        "fetch only from these exact hosts (a subdomain must be listed itself there).",
    )
    max_download_mb: int = Field(
        16, ge=1, description="Largest media file an engine downloads (vLLM's own default: 256 MB)."
    )
    max_image_pixels: int = Field(
        16_777_216, ge=1, description="Largest image an engine decodes, in pixels (4096 x 4096; vLLM's: 179 M)."
    )
    tokens_per_item: int = Field(
        2_400,
        ge=1,
        description="Prompt tokens each image, audio clip or video reserves from a key's token budget up front (its "
        "URL says nothing of them; the engine's usage settles the real count). Gemma-4 at most: 1,120 per image, "
        "750 per audio clip, 32 frames x 70 plus timestamps per video.",
    )


class IngressConfig(Strict):
    """The OpenAI-compatible HTTP front."""

    num_replicas: int = Field(1, ge=1, description="Ingress replicas (each routes on its own).")
    num_cpus: float = Field(0.5, ge=0, description="CPUs reserved per ingress replica.")
    max_ongoing_requests: int = Field(1024, ge=1, description="Requests one ingress replica holds at once.")
    request_timeout_s: float = Field(
        600, gt=0, description="Longest a request may take end to end, a stream's last chunk included."
    )
    stream_idle_timeout_s: float = Field(
        120,
        gt=0,
        description="Longest a stream may go without a chunk from its engine before the ingress ends it with an "
        "error event (an engine stalled mid-stream must not hold the client, its admission slot and its budget).",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        le=SERVE_MESSAGE_BYTES // 4,
        description="Largest request body accepted (at most a quarter of the largest message between the app's "
        "processes: the request travels on with its prompt's token ids).",
    )
    body_read_timeout_s: float = Field(
        30, gt=0, description="Longest a request's body may take to arrive after its headers (then 408)."
    )
    max_messages: int = Field(
        512,
        ge=1,
        description="Most messages in one chat request: chat templates render in time quadratic in their number "
        "(Gemma-4's: 0.9 s for 256 messages, 10 s for 1,024 on one core), on the ingress and again on the engine.",
    )
    render_timeout_s: float = Field(
        2.0,
        gt=0,
        description="Longest the ingress renders a prompt for the router, in a worker thread; past it the "
        "request routes cold and its engine renders it (vLLM bounds that with its own timeout).",
    )
    render_workers: int = Field(
        2, ge=1, description="Threads per ingress replica rendering prompts (a wait for one counts in the timeout)."
    )
    metrics_cache_s: float = Field(
        1.0,
        ge=0,
        description="How long one /metrics fan-out (a broadcast to every ingress and engine replica) answers every "
        "scrape of this ingress replica: however many arrive, the replicas answer at most once per this long.",
    )
    openapi_docs: bool = Field(
        False, description="Serve /openapi.json and /docs (the schema of every route; off on a public endpoint)."
    )
    limits: RequestLimits = Field(default_factory=RequestLimits)
    media: MediaConfig = Field(default_factory=MediaConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    engine_transport: Literal["ray", "grpc"] = Field(
        "grpc",
        description="How the ingress's calls reach engine replicas: Serve's inter-deployment gRPC (`grpc`, "
        "`_by_reference=False`) or Ray's object streaming (`ray`). gRPC costs the ingress and the engine replica "
        "13-40% less CPU per streamed chunk (docs/benchmarks.md, bench/overhead.py --transport).",
    )
    dispatch_retries: int = Field(
        2,
        ge=0,
        description="Times a request is sent again, to another replica, when its replica died before the "
        "first response byte (never for the client's own errors).",
    )

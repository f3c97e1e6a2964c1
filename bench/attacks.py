"""``make attacks``: what a hostile client tries against the running app, and what it gets.

Serves ``make serve``'s demo pair (local.yaml) with an API key required, then sends each attack of
docs/security.md's threat model through real HTTP: bodies that bomb the parser, chats that make the
template renderer work, requests that ask the engine for unbounded work, media URLs that point into the
network, bodies that never finish, missing keys. Each row says what the attack asked for, what it got, and
how long an unrelated request took to its first token while the attack ran. Whether the answer is the one
specified is the row's verdict; the script exits non-zero if any is not.

Writes docs/results/attacks.json and the table between the attacks markers of docs/security.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from bench.machine import describe_machine
from config import AppConfig, AuthConfig
from deployments.ingress import api_keys
from tools.doc_markers import replace_between
from tools.ports import free_port

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"  # the table in docs/security.md is made from this run's file
DOC = REPO / "docs" / "security.md"
BEGIN, END = "<!-- attacks:begin -->", "<!-- attacks:end -->"


@dataclass
class Outcome:
    attack: str
    expected: str  # the status (and error code) specified for it
    got: str
    seconds: float  # until the attack's answer
    bystander_ttft_s: float | None  # an unrelated request's time to first token, sent while the attack ran
    ok: bool


@dataclass
class Attack:
    name: str
    expected_status: int
    expected_code: str | None
    send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


def _chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}


def slowloris(base_url: str, headers: bytes = b"", timeout_s: float = 120) -> str:
    """Headers announce 1,000 bytes, nine arrive, then nothing; the raw answer, read until the server stops.

    The answer's body may follow its headers in another packet (or in chunks), so one read is not enough.
    """
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + headers
            + b"Content-Length: 1000\r\n\r\n"
            + b'{"model":'
        )
        raw = sock.recv(65536)
        sock.settimeout(2)
        try:
            while chunk := sock.recv(65536):
                raw += chunk
        except TimeoutError:
            pass
        return raw.decode(errors="replace")


def _slow_body(base_url: str, key: str) -> Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]:
    """The slowloris attack with a valid key: without one the ingress answers 401 before it reads the body."""

    async def send(_: httpx.AsyncClient) -> httpx.Response:
        raw = await asyncio.to_thread(slowloris, base_url, f"Authorization: Bearer {key}\r\n".encode())
        status = int(raw.split(" ", 2)[1]) if raw.startswith("HTTP/") else 0
        body = raw.partition("\r\n\r\n")[2]
        json_part = body[body.find("{") : body.rfind("}") + 1]  # chunked framing around it, if any
        return httpx.Response(status, content=json_part.encode())

    return send


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A server on the nodes' network an SSRF would reach: it records every request it gets."""

    hits: list[str] = []  # noqa: RUF012 (one server per run)

    def do_GET(self) -> None:
        _Recorder.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def attacks(base_url: str, model: str, key: str, internal_url: str) -> list[Attack]:
    """The threat model's client-side attacks, each with the answer docs/security.md specifies."""
    auth = {"Authorization": f"Bearer {key}"}

    def post(body: Any, path: str = "/v1/chat/completions", headers: dict[str, str] | None = None) -> Callable:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()

        async def send(client: httpx.AsyncClient) -> httpx.Response:
            h = {"Content-Type": "application/json"} | (auth if headers is None else headers)
            return await client.post(path, content=content, headers=h)

        return send

    def get(path: str, headers: dict[str, str]) -> Callable:
        async def send(client: httpx.AsyncClient) -> httpx.Response:
            return await client.get(path, headers=headers)

        return send

    image = [{"type": "image_url", "image_url": {"url": internal_url}}, {"type": "text", "text": "what is this?"}]
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(3001)]
    return [
        Attack("no API key", 401, "invalid_api_key", post(_chat(model), headers={})),
        Attack("wrong API key", 401, "invalid_api_key", post(_chat(model), headers={"Authorization": "Bearer sk-x"})),
        Attack("/metrics without a key (fans out to every replica)", 401, "invalid_api_key", get("/metrics", {})),
        Attack("/docs on a production config", 404, None, get("/docs", auth)),
        Attack("JSON nesting bomb ([ x 100,000)", 400, "invalid_json", post(b"[" * 100_000)),
        Attack("body over 8 MiB", 413, "body_too_large", post(b'{"model": "' + b"x" * (9 << 20) + b'"}')),
        Attack("body that never finishes, no key (slowloris)", 401, None, _slow_body(base_url, "")),
        Attack("body that never finishes, valid key", 408, "body_timeout", _slow_body(base_url, key)),
        Attack("3,001-message chat (quadratic template)", 400, "too_many_messages", post(_chat(model, messages=many))),
        Attack("201-message chat (fills the context; rendered off the loop)", 200, None,
               post(_chat(model, messages=[*many[:200], {"role": "user", "content": "and?"}]))),
        Attack("5 MiB of text in one message (under the body limit)", 400, "text_too_long",
               post(_chat(model, messages=[{"role": "user", "content": "word " * (1 << 20)}]))),
        Attack("client chat_template (Jinja on our hosts)", 400, "chat_template_not_allowed",
               post(_chat(model, chat_template="{% for i in range(10**9) %}x{% endfor %}"))),
        Attack("tokenizer kwargs via chat_template_kwargs", 200, None,
               post(_chat(model, chat_template_kwargs={"padding": "max_length", "max_length": 10**9}))),
        Attack("n: 4096", 400, "n_too_large", post(_chat(model, n=4096))),
        Attack("1,024-prompt completions batch", 400, "too_many_prompts",
               post({"model": model, "prompt": ["x"] * 1024, "max_tokens": 4}, "/v1/completions")),
        Attack("32 prompts x n 8 x 2,048 tokens", 400, "output_budget_exceeded",
               post({"model": model, "prompt": ["x"] * 32, "n": 8, "max_tokens": 2048}, "/v1/completions")),
        Attack("beam search", 400, "beam_search_off",
               post({"model": model, "prompt": "x", "use_beam_search": True, "max_tokens": 4}, "/v1/completions")),
        Attack("image_url into the network (SSRF)", 400, "media_url_not_allowed",
               post({"model": model, "messages": [{"role": "user", "content": image}], "max_tokens": 4})),
        Attack("engine-only fields (vllm_xargs, kv/ec_transfer_params)", 200, None,
               post(_chat(model, vllm_xargs={"x": 1}, kv_transfer_params={"prompt_token_ids": [1]},
                          ec_transfer_params={"do_remote_decode": True}))),
        Attack("forged x-request-id (600 chars)", 200, None,
               post(_chat(model), headers=auth | {"x-request-id": "id-" + "A" * 600})),
    ]  # fmt: skip


async def _bystander(client: httpx.AsyncClient, model: str, key: str) -> float | None:
    """An unrelated user's streamed chat: seconds to its first chunk; None if it got none (an error)."""
    start = time.perf_counter()
    body = _chat(model, stream=True)
    async with client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as r:
        async for line in r.aiter_lines():
            if r.status_code == 200 and line.startswith("data: "):
                return time.perf_counter() - start
    return None


def _code(resp: httpx.Response) -> str | None:
    try:
        return resp.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


async def run_attack(base_url: str, attack: Attack, model: str, key: str) -> Outcome:
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        start = time.perf_counter()
        hostile = asyncio.create_task(attack.send(client))
        await asyncio.sleep(0.2)  # the attack is in flight
        bystander = await _bystander(client, model, key)
        resp = await hostile
        seconds = time.perf_counter() - start
    code = _code(resp)
    expected = f"{attack.expected_status}" + (f" {attack.expected_code}" if attack.expected_code else "")
    ok = resp.status_code == attack.expected_status and (attack.expected_code is None or code == attack.expected_code)
    got = f"{resp.status_code}" + (f" {code}" if code else "")
    return Outcome(attack.name, expected, got, seconds, bystander, ok)


def attack_config(key: str) -> AppConfig:
    """make serve's config as production sets it: a key required, /docs off."""
    base = AppConfig.from_yaml(REPO / "serve_app" / "configs" / "local.yaml")
    auth = AuthConfig(api_key_sha256=[api_keys.digest(key)])
    ingress = base.ingress.model_copy(update={"openapi_docs": False})
    return base.model_copy(update={"name": "dflash-attacks", "auth": auth, "ingress": ingress})


def markdown(outcomes: list[Outcome], ssrf_hits: int) -> str:
    lines = [
        "| attack | specified | got | done in (attack and bystander) "
        "| unrelated request's first token meanwhile | verdict |",
        "|---|---|---|---:|---:|---|",
    ]
    for o in outcomes:
        ttft = f"{o.bystander_ttft_s:.2f} s" if o.bystander_ttft_s is not None else "–"
        verdict = "as specified" if o.ok else "**NO**"
        lines.append(f"| {o.attack} | {o.expected} | {o.got} | {o.seconds:.2f} s | {ttft} | {verdict} |")
    lines.append(f"\nRequests the internal server (the SSRF target) received: {ssrf_hits}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from tools.demo_pair import ensure_demo_pair
    from tools.serve import serving

    ensure_demo_pair()
    key = api_keys.generate()
    config = attack_config(key)
    model = config.models[0].id
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder) as internal:
        threading.Thread(target=internal.serve_forever, daemon=True).start()
        internal_url = f"http://127.0.0.1:{internal.server_address[1]}/latest/meta-data/"
        with serving(config, free_port()) as base_url:
            outcomes = []
            for attack in tqdm(attacks(base_url, model, key, internal_url), desc="attacks"):
                outcomes.append(asyncio.run(run_attack(base_url, attack, model, key)))
                tqdm.write(f"{attack.name}: {outcomes[-1].got} ({'ok' if outcomes[-1].ok else 'NOT AS SPECIFIED'})")
        internal.shutdown()
    hits = len(_Recorder.hits)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "attacks.json").write_text(
        json.dumps({"outcomes": [asdict(o) for o in outcomes], "ssrf_hits": hits}, indent=2) + "\n"
    )
    table = f"Run {time.strftime('%Y-%m-%d')} on {describe_machine()} (`make attacks`):\n\n{markdown(outcomes, hits)}"
    replace_between(DOC, BEGIN, END, table)
    print(table)
    if hits or not all(o.ok for o in outcomes):
        raise SystemExit("some attacks were not answered as specified")


if __name__ == "__main__":
    main()

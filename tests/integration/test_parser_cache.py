"""The shared parser state leaves Gemma-4 reasoning/tool parsing unchanged and is built once.

Runs in a subprocess: installing the cache patches vLLM for the whole process, and the baseline
must be computed on the unpatched parser first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.paths import REPO_ROOT

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.parser.gemma4 import Gemma4Parser
    from vllm.tokenizers import get_tokenizer
    from tools.tiny_models import ensure_models

    target, _ = ensure_models()
    tok = get_tokenizer(str(target))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    outputs = [
        "<|channel>thought\\nSix times seven: 6*7 = 42.<channel|>The answer is 42.",
        "Plain answer without thinking.",
        "<|channel>thought\\nNeed the weather.<channel|>"
        "<|tool_call>call:get_weather{city:<|\\"|>Paris<|\\"|>}<tool_call|>",
        "<|tool_call>call:get_weather{city:<|\\"|>Oslo<|\\"|>}<tool_call|>",
    ]

    def run():
        results = []
        for thinking in (True, False):
            req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], tools=tools,
                                        chat_template_kwargs={"enable_thinking": thinking})
            for text in outputs:
                p = Gemma4Parser(tok, req.tools, chat_template_kwargs=req.chat_template_kwargs)
                reasoning, content, calls = p.parse(text, req, enable_auto_tools=True)
                full = [reasoning, content, [c.model_dump() for c in calls or []]]
                p = Gemma4Parser(tok, req.tools, chat_template_kwargs=req.chat_template_kwargs)
                ids = tok.encode(text, add_special_tokens=False)
                deltas = []
                for i, tid in enumerate(ids):
                    piece = tok.decode([tid], skip_special_tokens=False)
                    d = p.parse_delta(piece, [tid], req, finished=i == len(ids) - 1)
                    no_ids = {"tool_calls": {"__all__": {"id"}}}  # call ids are random per parser
                    deltas.append(None if d is None else d.model_dump(exclude_none=True, exclude=no_ids))
                results.append([full, deltas])
        return results

    before = run()
    from deployments.engine import parser_cache
    parser_cache.install()
    calls = {"n": 0}
    original = type(tok).get_vocab
    def counting(self):
        calls["n"] += 1
        return original(self)
    type(tok).get_vocab = counting
    after = run()
    json.dump({"same": before == after, "get_vocab_calls": calls["n"], "n": len(before),
               "sample": after[0][0]}, sys.stdout)
    """
)


def test_parsed_output_unchanged_and_state_shared():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] == 8
    assert result["same"], "parsing changed once the parser state was shared"
    # 16 parsers were built after the cache went in (8 cases x parse + stream): one vocab for all.
    assert result["get_vocab_calls"] == 1
    reasoning, content, _ = result["sample"]
    assert "42" in reasoning and content == "The answer is 42."

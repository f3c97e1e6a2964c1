"""Run one greedy request through vLLM with a DFlash drafter and save what the drafter saw and said.

Run as a script (its own process: vLLM's engine state stays out of the test process):

    python tests/integration/vllm_draft_capture.py TARGET_DIR DRAFTER_DIR PROMPT_IDS_JSON OUT.pt [auto|zlab|vllm]

The last argument is the engine's ``speculative.draft_semantics`` (passed as dflash-serve passes it,
through ``--additional-config``; default auto): the drafter is built by this package's vLLM plugin.

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the drafter module can be
reached; its first draft after the prefill is recorded: the target's concatenated aux hidden states
(``combine_hidden_states`` input), the context positions, the query ids/positions and the draft
logits (``compute_logits`` output).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


def main() -> None:
    import torch
    from vllm import LLM, SamplingParams

    from vllm_plugins.draft_semantics import ADDITIONAL_CONFIG_KEY

    target, drafter, prompt_json, out = sys.argv[1:5]
    semantics = sys.argv[5] if len(sys.argv) > 5 else "auto"
    llm = LLM(
        model=target,
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        kv_cache_memory_bytes=1 << 28,
        block_size=32,
        max_num_seqs=1,
        max_num_batched_tokens=512,
        speculative_config={"method": "dflash", "model": drafter, "num_speculative_tokens": 15},
        additional_config={ADDITIONAL_CONFIG_KEY: {"draft_semantics": semantics}},
        limit_mm_per_prompt={"image": 0, "video": 0},
    )
    model = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner.drafter.model
    captured: dict[str, Any] = {"class": type(model).__name__}

    def record(name: str, pick) -> None:
        original = getattr(model, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            captured.setdefault(name, pick(args, kwargs, result))
            return result

        setattr(model, name, wrapper)

    record("combine_hidden_states", lambda a, k, r: a[0].clone())
    record("precompute_and_store_context_kv", lambda a, k, r: a[1].clone())
    record("forward", lambda a, k, r: (k["input_ids"].clone(), k["positions"].clone()))
    record("compute_logits", lambda a, k, r: r.clone())
    prompt = json.loads(prompt_json)
    llm.generate({"prompt_token_ids": prompt}, SamplingParams(max_tokens=3, temperature=0.0))
    torch.save(captured, out)


if __name__ == "__main__":
    main()

"""Gemma-4's multimodal target with the placeholders its processor expands, for vLLM's 'string' content format.

The engines hand message content to the chat template in vLLM's 'string' format: Gemma-4's template
prints a system message's content as is, so the 'openai' format (a list of parts, strings included)
puts the list's repr into every prompt with a system message. In 'string' format vLLM replaces each
image part by the model class's ``get_placeholder_str``; vLLM 0.32's ``Gemma4ForConditionalGeneration``
returns ``<image_soft_token>`` (Gemma 3's), which is no token of Gemma-4's vocabulary, so the processor
finds nothing to expand and every image request fails ("Failed to apply prompt replacement", a 500).
This subclass returns the tokens Gemma-4's processor expands, ``<|image|>`` and ``<|audio|>``, as its
tokenizer config names them; vLLM's own class is registered under it by ``vllm_plugins.register``.
It keeps vLLM's class name: vLLM's speculative decoding picks a multimodal target's image token id by
the class's name (``llm_base_proposer.py``), so a renamed subclass would not load with a drafter.
"""

from __future__ import annotations

from vllm.model_executor.models import gemma4_mm

# Gemma4Processor's image_token and audio_token (the real tokenizer_config.json's names for ids 258880, 258881).
PLACEHOLDERS = {"image": "<|image|>", "audio": "<|audio|>"}


class Gemma4ForConditionalGeneration(gemma4_mm.Gemma4ForConditionalGeneration):
    """vLLM's class, with the placeholders Gemma-4's processor expands."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        return PLACEHOLDERS.get(modality) or super().get_placeholder_str(modality, i)

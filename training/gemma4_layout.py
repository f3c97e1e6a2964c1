"""The files of a Gemma-4 multimodal checkpoint, in miniature: what google/gemma-4-26B-A4B-it ships besides weights.

The production target is ``Gemma4ForConditionalGeneration`` (text model + vision tower; vLLM's
``gemma4_mm``), so the tiny targets are too. This module writes what that class needs around the
weights, in the layout of the real checkpoint:

* ``config.json``: ``Gemma4Config`` with the text config, a one-layer vision tower and the real
  multimodal token ids (``<|image>`` 255999, ``<|image|>`` 258880, ``<image|>`` 258882, ...);
* ``tokenizer_config.json``: the named special tokens (``image_token``, ``boi_token``, ...) that
  ``Gemma4Processor`` reads, as the real tokenizer config declares them; id 258884 is renamed
  ``<|video|>`` (the shipped SentencePiece vocabulary calls it ``<unused2968>``; without the name the
  processor would append a 262,145th token);
* ``processor_config.json``: image, video and audio processor settings at the real defaults, except
  the smallest image budget the Gemma-4 image processor allows (70 soft tokens), so an image costs a
  CPU little.

The vision tower's weights are random (seeded): images reach the model and change its output, but
the tiny pair was never trained on them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "gemma4_tokenizer"

# Named tokens exactly as google/gemma-4-*-it's tokenizer_config.json declares them.
NAMED_TOKENS = {
    "audio_token": "<|audio|>",
    "boa_token": "<|audio>",
    "boi_token": "<|image>",
    "eoa_token": "<audio|>",
    "eoc_token": "<channel|>",
    "eoi_token": "<image|>",
    "eot_token": "<turn|>",
    "escape_token": '<|"|>',
    "etc_token": "<tool_call|>",
    "etd_token": "<tool|>",
    "etr_token": "<tool_response|>",
    "image_token": "<|image|>",
    "soc_token": "<|channel>",
    "sot_token": "<|turn>",
    "stc_token": "<|tool_call>",
    "std_token": "<|tool>",
    "str_token": "<|tool_response>",
    "think_token": "<|think|>",
}
VIDEO_TOKEN, VIDEO_TOKEN_ID = "<|video|>", 258884
IMAGE_SOFT_TOKENS = 70  # the smallest of the image processor's budgets (70, 140, 280, 560, 1120)
PATCH_SIZE, POOLING_KERNEL = 16, 3

VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "patch_size": PATCH_SIZE,
    "pooling_kernel_size": POOLING_KERNEL,
    # the largest patch coordinate at 70 soft tokens is (630 // 9) * 3 = 210, for an extreme aspect ratio
    "position_embedding_size": 256,
    "default_output_length": IMAGE_SOFT_TOKENS,  # not a Gemma4VisionConfig field: vLLM's gemma4_mm reads it
    "standardize": False,
    "use_clipped_linears": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 100.0},
}
_PIXELS = {
    "do_convert_rgb": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.0, 0.0, 0.0],
    "image_std": [1.0, 1.0, 1.0],
    "max_soft_tokens": IMAGE_SOFT_TOKENS,
    "patch_size": PATCH_SIZE,
    "pooling_kernel_size": POOLING_KERNEL,
    "resample": 3,
    "rescale_factor": 1 / 255,
}
PROCESSOR_CONFIG: dict[str, Any] = {
    "processor_class": "Gemma4Processor",
    "image_seq_length": IMAGE_SOFT_TOKENS,
    "audio_seq_length": 750,
    "audio_ms_per_token": 40,
    "image_processor": {
        "image_processor_type": "Gemma4ImageProcessor",
        "do_normalize": False,
        "image_seq_length": IMAGE_SOFT_TOKENS,
        **_PIXELS,
    },
    "video_processor": {
        "video_processor_type": "Gemma4VideoProcessor",
        "do_normalize": True,
        "do_sample_frames": True,
        "num_frames": 32,
        "return_metadata": False,
        **_PIXELS,
    },
    # Gemma4AudioFeatureExtractor's defaults, as the real processor_config.json carries them
    "feature_extractor": {
        "feature_extractor_type": "Gemma4AudioFeatureExtractor",
        "feature_size": 128,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "return_attention_mask": True,
        "frame_length_ms": 20.0,
        "hop_length_ms": 10.0,
        "min_frequency": 0.0,
        "max_frequency": 8000.0,
        "preemphasis": 0.0,
        "preemphasis_htk_flavor": True,
        "fft_overdrive": False,
        "dither": 0.0,
        "input_scale_factor": 1.0,
        "mel_floor": 0.001,
        "per_bin_mean": None,
        "per_bin_stddev": None,
    },
}


def load_tokenizer():  # noqa: ANN201 - a transformers tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def multimodal_token_ids(tokenizer) -> dict[str, int]:  # noqa: ANN001
    """Ids of the named tokens in the Gemma-4 vocabulary (``video_token`` by its fixed id)."""
    return {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in NAMED_TOKENS.items()} | {
        "video_token": VIDEO_TOKEN_ID
    }


def multimodal_config(text_config, tokenizer):  # noqa: ANN001, ANN201 - transformers configs
    """``Gemma4Config`` around ``text_config`` with a one-layer vision tower and the real token ids."""
    from transformers import Gemma4Config, Gemma4VisionConfig

    ids = multimodal_token_ids(tokenizer)
    text_config.architectures = None
    return Gemma4Config(
        text_config=text_config,
        vision_config=Gemma4VisionConfig(**VISION_CONFIG),
        audio_config=None,
        boi_token_id=ids["boi_token"],
        eoi_token_id=ids["eoi_token"],
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        boa_token_id=ids["boa_token"],
        eoa_token_index=ids["eoa_token"],
        audio_token_id=ids["audio_token"],
        architectures=["Gemma4ForConditionalGeneration"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )


def save_tokenizer(tokenizer, out: Path) -> None:  # noqa: ANN001
    """The tokenizer and chat template in the real checkpoint's layout (named tokens, ``<|video|>``)."""
    tokenizer.save_pretrained(out)
    path = out / "tokenizer.json"
    data = json.loads(path.read_text())
    renamed = None
    for added in data["added_tokens"]:
        if added["id"] == VIDEO_TOKEN_ID:
            renamed, added["content"] = added["content"], VIDEO_TOKEN
    vocab = data["model"]["vocab"]
    if renamed is None or vocab.get(renamed) != VIDEO_TOKEN_ID:
        raise ValueError(f"id {VIDEO_TOKEN_ID} is not the unused slot the real vocabulary names {VIDEO_TOKEN}")
    del vocab[renamed]
    vocab[VIDEO_TOKEN] = VIDEO_TOKEN_ID
    path.write_text(json.dumps(data, ensure_ascii=False))
    config = {
        **NAMED_TOKENS,
        "backend": "tokenizers",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "extra_special_tokens": [VIDEO_TOKEN],
        "padding_side": "left",
        "processor_class": "Gemma4Processor",
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(TOKENIZER_DIR / "chat_template.jinja", out / "chat_template.jinja")


def save_processor(out: Path) -> None:
    (out / "processor_config.json").write_text(json.dumps(PROCESSOR_CONFIG, indent=2))


def text_to_multimodal_keys(state: dict) -> dict:
    """A ``Gemma4ForCausalLM`` state dict under ``Gemma4ForConditionalGeneration``'s names."""
    prefix = "model."
    return {(f"{prefix}language_model.{k[len(prefix) :]}" if k.startswith(prefix) else k): v for k, v in state.items()}

"""The embedded default model: the real Qwen2.5-VL architecture at 1M parameters.

Everything is built locally: a byte-level BPE tokenizer trained on the synthetic benchmark's text
(plus Qwen's special tokens), a Qwen-form chat template, the slow PIL image processor, and
`Qwen2_5_VLForConditionalGeneration` from a tiny config. Trained weights ship as safetensors in
vlmstress/assets/tiny and load through the same code path as any `hf:` checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Added as ordinary (non-special) tokens so that decoding keeps them in the completion text.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# Qwen2.5-VL's template shape: <|im_start|>role\n ... <|im_end|>\n, the image as
# <|vision_start|><|image_pad|><|vision_end|> where the image part stands.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

SIZES = {
    # text hidden, layers, heads, kv heads, mlp; vision hidden, depth, heads, mlp
    "default": dict(
        hidden=128, layers=4, heads=4, kv=2, mlp=512, v_hidden=64, v_depth=2, v_heads=4, v_mlp=256
    ),
    "test": dict(hidden=32, layers=2, heads=2, kv=1, mlp=64, v_hidden=16, v_depth=1, v_heads=2, v_mlp=32),
}


class PilQwenProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without a video processor.

    The stock class check resolves the video processor class even when none is given, and that
    class needs torchvision, which this project does not depend on; images go through the slow PIL
    image processor, so video is simply absent.
    """

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE whose merges may cross spaces, so the benchmark's frequent phrases ("Where is
    the ") become one token each and sequences are half as long as with word-bounded merges (the
    step time of a CPU run is proportional).

    Pieces are cut so that what the model must relate stays whole: each option line ("C. below")
    is one piece, which BPE merges into one token carrying both letter and text, so mapping a value
    to its letter is one attention step instead of an induction circuit (which a 1M-parameter model
    did not form in 16k examples here); likewise " (C)" after a value in the reasoning is one
    token, predicted right at the value; " row 3" and " col 2" are one token each, so a position
    is a word the vision warm-up can align an image token to, like a colour; punctuation, lone
    capitals, digits and the synthetic benchmark's value words are pieces of their own, so a value in
    the reasoning is the same token wherever it appears. An option line stops before the think
    hedge (" but I think"), so a hedged reasoning ends in the same option token as a plain one.
    """
    import re

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from vlmstress.data.synth import VALUE_WORDS
    from vlmstress.perturb import THINK_HEDGE

    words = "|".join(sorted(VALUE_WORDS, key=len, reverse=True))
    hedge = re.escape(THINK_HEDGE)
    pieces = (
        rf"\n[A-Z]\. (?:(?!{hedge})[^\n])*| \([A-Z]\)| row [0-9]| col [0-9]|\n|\b[A-Z]\b|[0-9]|[.,?:;]"
        rf"|\b(?:{words})\b"
    )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pieces), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=32,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    fast.add_tokens(TAG_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def image_processor() -> Qwen2VLImageProcessorPil:
    # 64x64 images stay 64x64: patch 8, merged 2x2 -> 16 image tokens per image.
    return Qwen2VLImageProcessorPil(
        patch_size=8,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=32 * 32,
        max_pixels=64 * 64,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def build_processor(tokenizer: PreTrainedTokenizerFast) -> PilQwenProcessor:
    return PilQwenProcessor(
        image_processor=image_processor(),
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(tokenizer: PreTrainedTokenizerFast, size: str = "default") -> Qwen2_5_VLConfig:
    s = SIZES[size]
    ids = tokenizer.convert_tokens_to_ids
    head_dim = s["hidden"] // s["heads"]
    # mrope_section splits the rotary half-dimension over (time, height, width); it must sum to head_dim/2.
    half = head_dim // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=s["hidden"],
            intermediate_size=s["mlp"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=s["kv"],
            max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            bos_token_id=None,
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=s["v_depth"],
            hidden_size=s["v_hidden"],
            intermediate_size=s["v_mlp"],
            num_heads=s["v_heads"],
            in_channels=3,
            patch_size=8,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=64,
            out_hidden_size=s["hidden"],
            fullatt_block_indexes=list(range(s["v_depth"])),
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )


def new_model(tokenizer: PreTrainedTokenizerFast, size: str = "default", seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer, size))


def save(model, processor: PilQwenProcessor, out: str | Path) -> None:
    """A complete checkpoint folder: config, safetensors weights, tokenizer, image processor."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)


def load_tiny(path: str | Path | None = None, **options):
    """`--model tiny` (the shipped weights) or `tiny:DIR` (a checkpoint folder of the same shape)."""
    from vlmstress.models.hf import HFModel

    path = Path(path) if path else ASSET_DIR
    return HFModel.from_pretrained(str(path), name=f"tiny:{path}" if path != ASSET_DIR else "tiny", **options)

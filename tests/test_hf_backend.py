"""HFModel (`hf:`) on tiny random-weight checkpoints of real architectures.

Each checkpoint is built from configs (Qwen2.5-VL, Qwen2-VL, LLaVA-OneVision, Idefics3, and the
project's own tiny model), saved to disk in the hub's layout and loaded back the way a user loads a hub
id, so processor loading (without torchvision), chat templates, image tokens, batching with left
padding and letter scoring all run through the real transformers code.
"""

from __future__ import annotations

import importlib.util
import json
import random
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from vlmstress.data import synth
from vlmstress.errors import UsageError
from vlmstress.models import tiny
from vlmstress.models.base import chat_messages
from vlmstress.models.hf import HFModel, _StepLogits, forced_answer_prefix, load_processor
from vlmstress.models.registry import load_model
from vlmstress.parse import parse
from vlmstress.perturb import Prompt, perturb

# Qwen2's pre-tokenizer split: it writes "<answer>B" as "<answer" + ">B" and " B" as one token, the
# letter forms the scoring must cope with on the real checkpoints.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CORPUS = [
    text
    for letter in "ABCD"
    for text in (
        f"<think>The red circle is left of the square, so {letter}.</think><answer>{letter}</answer>",
        f"<answer> {letter}</answer>",
        f"<answer>({letter})</answer>",
        f"\n{letter}. left\n",
    )
] * 20 + ["Where is the red circle? Which shape is larger? How many squares are there? é漢🙂"] * 20


def content_template(image_text: str, *, generation_prompt: str = "<|im_start|>assistant\n") -> str:
    """A Qwen-form chat template whose image part renders as `image_text`."""
    return (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{{ '" + image_text + "' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{ '<|im_end|>\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '" + generation_prompt.replace("\n", "\\n") + "' }}{%- endif -%}"
    )


IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def qwen_like_tokenizer(specials: list[str], template: str, eos: str, pad: str) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad)
    fast.chat_template = template
    return fast


def text_config(tok, eos: str, pad: str, **extra) -> dict:
    ids = tok.convert_tokens_to_ids
    return dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        eos_token_id=ids(eos),
        pad_token_id=ids(pad),
        bos_token_id=None,
        **extra,
    )


QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def build_qwen(version: str):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = qwen_like_tokenizer(
        QWEN_SPECIALS,
        content_template("<|vision_start|><|image_pad|><|vision_end|>"),
        "<|im_end|>",
        "<|endoftext|>",
    )
    ids = tok.convert_tokens_to_ids
    images = Qwen2VLImageProcessorPil(
        patch_size=8,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=16 * 16,
        max_pixels=32 * 32,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    common = dict(
        text_config=text_config(tok, "<|im_end|>", "<|endoftext|>", rope_parameters=rope),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    vision = dict(num_heads=2, patch_size=8, spatial_merge_size=2, temporal_patch_size=2)
    if version == "2.5":
        config = Qwen2_5_VLConfig(
            vision_config=dict(
                vision,
                depth=1,
                hidden_size=16,
                intermediate_size=32,
                window_size=32,
                out_hidden_size=32,
                fullatt_block_indexes=[0],
            ),
            **common,
        )
        return (
            Qwen2_5_VLForConditionalGeneration(config),
            tok,
            images,
            {"processor_class": "Qwen2_5_VLProcessor"},
        )
    config = Qwen2VLConfig(
        vision_config=dict(vision, depth=1, embed_dim=16, hidden_size=32, mlp_ratio=2), **common
    )
    return Qwen2VLForConditionalGeneration(config), tok, images, {"processor_class": "Qwen2VLProcessor"}


def build_llava_onevision():
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tok = qwen_like_tokenizer(specials, content_template("<image>\\n"), "<|im_end|>", "<|endoftext|>")
    pinpoints = [[16, 16], [16, 32], [32, 16], [32, 32]]
    images = LlavaOnevisionImageProcessorPil(
        size={"height": 16, "width": 16},
        image_grid_pinpoints=pinpoints,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    config = LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", **text_config(tok, "<|im_end|>", "<|endoftext|>")),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
            vision_use_head=False,
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",
    )
    # A 16 px SigLIP with 8 px patches gives 4 features per tile.
    processor = {
        "processor_class": "LlavaOnevisionProcessor",
        "num_image_tokens": 4,
        "vision_feature_select_strategy": "full",
        "vision_aspect_ratio": "anyres_max_9",
    }
    return LlavaOnevisionForConditionalGeneration(config), tok, images, processor


def build_idefics3():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tiles = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<fake_token_around_image>",
        "<image>",
        "<end_of_utterance>",
        "<global-img>",
        *tiles,
    ]
    tok = qwen_like_tokenizer(specials, IDEFICS3_TEMPLATE, "<end_of_utterance>", "<|end_of_text|>")
    images = Idefics3ImageProcessorPil(
        size={"longest_edge": 16},
        max_image_size={"longest_edge": 16},
        do_image_splitting=False,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    config = Idefics3Config(
        text_config=dict(model_type="llama", **text_config(tok, "<end_of_utterance>", "<|end_of_text|>")),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        ),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        pad_token_id=tok.convert_tokens_to_ids("<|end_of_text|>"),
    )
    # (16 px / 8 px patches)^2 / scale_factor^2 = 1 image token per image.
    return (
        Idefics3ForConditionalGeneration(config),
        tok,
        images,
        {"processor_class": "Idefics3Processor", "image_seq_len": 1},
    )


def save_checkpoint(out: Path, arch: str) -> Path:
    """A checkpoint folder in the hub's layout: config + safetensors, tokenizer (with its chat
    template), preprocessor_config.json naming the processor class, processor_config.json for the
    processor's own settings."""
    torch.manual_seed(0)
    if arch == "tiny":  # the embedded default's own builder and layout
        tok = tiny.build_tokenizer(CORPUS, vocab_size=400)
        tiny.save(tiny.new_model(tok, "test"), tiny.build_processor(tok), out)
        return out
    builders = {
        "qwen2.5-vl": lambda: build_qwen("2.5"),
        "qwen2-vl": lambda: build_qwen("2"),
        "llava-onevision": build_llava_onevision,
        "idefics3": build_idefics3,
    }
    model, tok, images, processor = builders[arch]()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    images.save_pretrained(out)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(
        json.dumps(pre | {"processor_class": processor["processor_class"]})
    )
    (out / "processor_config.json").write_text(json.dumps(processor))
    return out


ARCHS = ["qwen2.5-vl", "qwen2-vl", "llava-onevision", "idefics3", "tiny"]
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


@pytest.fixture(scope="module", params=ARCHS)
def checkpoint(request, tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def model(checkpoint) -> HFModel:
    return HFModel.from_pretrained(str(checkpoint), device="cpu")


def prompts() -> list[Prompt]:
    """Images of different sizes (different image-token counts, so real left padding), a text-only
    prompt, and prefills, one of them open."""
    return [
        Prompt(
            "s1",
            "base",
            "Where is the red circle?\nA. left\nB. right",
            Image.new("RGB", (32, 32), "red"),
            ("left", "right"),
            "A",
        ),
        Prompt(
            "s2",
            "wrong_think",
            "Which shape is larger?\nA. circle\nB. square\nC. same",
            Image.new("RGB", (24, 40), "blue"),
            ("circle", "square", "same"),
            "B",
            prefill="<think>The square is larger",
        ),
        Prompt(
            "s3",
            "stop_think",
            "How many squares are there?\nA. 1\nB. 2",
            None,
            ("1", "2"),
            "B",
            prefill="<think>Okay.</think>",
        ),
    ]


def test_loads_through_the_registry_without_torchvision(checkpoint):
    loaded = load_model(f"hf:{checkpoint}", device="cpu", dtype="float32")
    assert isinstance(loaded, HFModel)
    assert loaded.name == f"hf:{checkpoint}"
    assert loaded.model.dtype == torch.float32 and loaded.device == "cpu"
    if not HAS_TORCHVISION:  # the fallback: the checkpoint's processor class, minus its video processor
        assert getattr(loaded.processor, "video_processor", None) is None
        assert type(loaded.processor.image_processor).__name__.endswith("Pil")


def test_processor_survives_save_and_reload(model, tmp_path):
    """A processor saved by save_pretrained (as a training checkpoint saves it: no video config, the
    image processor nested in processor_config.json) loads back the same."""
    model.processor.save_pretrained(tmp_path)
    again = load_processor(str(tmp_path))
    assert type(again).__name__ == type(model.processor).__name__
    assert again.image_processor.to_dict() == model.processor.image_processor.to_dict()
    prompt = prompts()[1]
    rendered = again.apply_chat_template(chat_messages(prompt), add_generation_prompt=False, tokenize=False)
    assert rendered == model.processor.apply_chat_template(
        chat_messages(prompt), add_generation_prompt=False, tokenize=False
    )


def test_batched_greedy_equals_one_at_a_time(model):
    batch = model.generate(prompts(), max_new_tokens=8)
    alone = [model.generate([p], max_new_tokens=8)[0] for p in prompts()]
    for together, single in zip(batch, alone, strict=True):
        assert together.error is None and single.error is None
        assert together.text == single.text
        assert together.n_tokens == single.n_tokens > 0
        assert together.score_source == single.score_source
        assert together.letter_probs.keys() == single.letter_probs.keys()
        for letter, p in together.letter_probs.items():
            assert p == pytest.approx(single.letter_probs[letter], abs=1e-4)


def test_cached_images_change_no_generation(model):
    """Every prompt twice (as a sample's variants share its image objects), with the image cache and
    without: the same texts and letter probabilities. Qwen-VL and the tiny model cache (their image
    processors pass the independence check); LLaVA-OneVision and Idefics3 pad a batch, so do not."""
    first = prompts()
    twice = first + [replace(p, variant="again") for p in first]
    plain = HFModel(model=model.model, processor=model.processor, name="plain", image_cache_bytes=0)
    fresh = HFModel(model=model.model, processor=model.processor, name="cached")
    cached = fresh.generate(twice, max_new_tokens=6) + fresh.generate(twice[::-1], max_new_tokens=6)
    uncached = plain.generate(twice, max_new_tokens=6) + plain.generate(twice[::-1], max_new_tokens=6)
    assert [(g.text, g.letter_probs, g.score_source, g.error) for g in cached] == [
        (g.text, g.letter_probs, g.score_source, g.error) for g in uncached
    ]
    assert all(g.error is None for g in cached)
    independent = type(model.processor.image_processor).__name__.startswith("Qwen2VL")
    decoded = 32 * 32 * 3 + 24 * 40 * 3  # the two images, kept once each
    assert (fresh._image_cache.nbytes > decoded) is independent  # and where cached, their processed tensors
    assert fresh._image_cache.nbytes >= decoded
    assert plain._image_cache.nbytes == 0


def test_step_logits_are_generates_raw_logits(model):
    """The forward hook keeps, step for step, the same values generate(output_logits=True) returns."""
    enc = model._encode([model.prompt_text(p) for p in prompts()], [p.image for p in prompts()])
    columns = list(model._letter_columns(set("ABCD")))
    with _StepLogits(model.model, columns) as steps, torch.no_grad():
        out = model.model.generate(
            **enc,
            max_new_tokens=5,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=model.tokenizer.pad_token_id,
        )
    assert len(steps.steps) == len(out.logits) == 5
    for step, logits in enumerate(out.logits):
        assert torch.allclose(steps.at(step).float(), logits[:, columns], atol=1e-5)


def with_letter_bias(model: HFModel, letter_form: str) -> HFModel:
    """The model with a large output bias on one form of the option letters (e.g. "{}" or "Ġ{}"), so
    random weights still answer with a letter, and which letter still depends on the input."""
    head = model.model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        for letter in "ABCD":
            biased.bias[model.tokenizer.convert_tokens_to_ids(letter_form.format(letter))] = 8.0
    model.model.lm_head = biased
    return model


def test_letter_scores_from_generation_and_forced(checkpoint):
    # Bare letters on some tokenizers, space-led ones (" B") on the others.
    form = "{}" if checkpoint.name.startswith(("qwen2.5", "llava", "tiny")) else "Ġ{}"
    model = with_letter_bias(HFModel.from_pretrained(str(checkpoint), device="cpu"), form)
    answered = [
        Prompt(
            "a",
            "base",
            "Where is the red circle?\nA. left\nB. right\nC. up",
            Image.new("RGB", (32, 32), "red"),
            ("left", "right", "up"),
            "A",
            prefill="<think>It is on the left.</think><answer>",
        ),
        Prompt(
            "b",
            "base",
            "How many?\nA. 1\nB. 2\nC. 3\nD. 4",
            None,
            ("1", "2", "3", "4"),
            "B",
            prefill="<answer>",
        ),
    ]
    unanswered = [
        Prompt(
            "c",
            "base",
            "Which colour?\nA. red\nB. blue",
            Image.new("RGB", (32, 24), "blue"),
            ("red", "blue"),
            "B",
        )
    ]
    # One token: the bias makes every token a letter, and "<answer>BBB" is a word, not a letter.
    gens = model.generate(answered + unanswered, max_new_tokens=1)

    for prompt, gen in zip(answered, gens, strict=False):
        assert gen.score_source == "generation", gen.text
        assert list(gen.letter_probs) == prompt.option_letters
        assert sum(gen.letter_probs.values()) == pytest.approx(1.0)
        # The letter is the first generated token: its distribution is the prompt's next-token one.
        expected = next_letter_distribution(model, model.prompt_text(prompt), prompt, form)
        assert gen.letter_probs == pytest.approx(expected, abs=1e-4)

    [forced] = gens[len(answered) :]
    assert forced.score_source == "forced" and "<answer>" not in forced.text
    assert sum(forced.letter_probs.values()) == pytest.approx(1.0)
    head, _ = forced_answer_prefix(model.tokenizer, "A")
    bare = "{}" if head == "<answer>" else ">{}"  # the token that writes the letter after `head`
    text = model.prompt_text(unanswered[0]) + forced.text + head
    assert forced.letter_probs == pytest.approx(
        next_letter_distribution(model, text, unanswered[0], bare), abs=1e-4
    )


def next_letter_distribution(model: HFModel, text: str, prompt: Prompt, form: str) -> dict[str, float]:
    """A plain forward pass: the softmax over the option letters' `form` tokens at the next position."""
    image = prompt.image
    with torch.no_grad():
        logits = model.model(**model._encode([text], [image])).logits[0, -1]
    ids = [model.tokenizer.convert_tokens_to_ids(form.format(letter)) for letter in prompt.option_letters]
    return dict(zip(prompt.option_letters, torch.softmax(logits[ids], 0).tolist(), strict=True))


# -- letter positions and token forms: tokenizer only, no model ---------------------------------------


@pytest.fixture(scope="module")
def qwen_tokenizer() -> PreTrainedTokenizerFast:
    return qwen_like_tokenizer(QWEN_SPECIALS, content_template(""), "<|im_end|>", "<|endoftext|>")


def tokenizer_only(tok) -> HFModel:
    return HFModel(model=None, processor=SimpleNamespace(tokenizer=tok), name="test")


ABCD = ("a", "b", "c", "d")


@pytest.mark.parametrize(
    ("prefill", "completion", "token", "form"),
    [
        ("", "<think>x</think><answer>B</answer>", ">B", ">{}"),  # the tag's ">" merged into the letter
        ("", "<think>x</think><answer> C</answer>", "ĠC", "Ġ{}"),  # a space-led letter
        ("", "<answer>(D)</answer>", "D", "{}"),  # "(" merged with the tag, the letter alone
        ("<think>x</think><answer>", "A</answer>", "A", "{}"),  # the tag in the prefill
        ("<think>x</think>", "<answer>\nB</answer>", "B", "{}"),
    ],
)
def test_answer_letter_token_forms(qwen_tokenizer, prefill, completion, token, form):
    model = tokenizer_only(qwen_tokenizer)
    ids = qwen_tokenizer.encode(completion, add_special_tokens=False)
    text = qwen_tokenizer.decode(ids, skip_special_tokens=True)
    step, family = model._answer_letter_position(
        ids, text, Prompt("s", "base", "Q", None, ABCD, "A", prefill=prefill)
    )
    assert qwen_tokenizer.convert_ids_to_tokens(ids[step]) == token
    assert family == {letter: qwen_tokenizer.convert_tokens_to_ids(form.format(letter)) for letter in "ABCD"}


@pytest.mark.parametrize(
    ("prefill", "completion"),
    [
        ("", "<think>x</think> The answer is B."),  # no tag
        ("", "<answer>Both</answer>"),  # a word, not a letter
        ("", "<answer>E</answer>"),  # not one of the options
        ("<answer>B", "</answer>"),  # the letter was in the prefill: nothing generated to score
        ("", "<answer></answer>"),
    ],
)
def test_no_answer_letter(qwen_tokenizer, prefill, completion):
    model = tokenizer_only(qwen_tokenizer)
    ids = qwen_tokenizer.encode(completion, add_special_tokens=False)
    text = qwen_tokenizer.decode(ids, skip_special_tokens=True)
    assert (
        model._answer_letter_position(ids, text, Prompt("s", "b", "Q", None, ABCD, "A", prefill=prefill))
        is None
    )


def test_token_at_agrees_with_prefix_decoding(qwen_tokenizer):
    """Bisection finds the token a linear walk over prefix decodes finds, multi-byte characters included."""
    model = tokenizer_only(qwen_tokenizer)
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(len(qwen_tokenizer)) for _ in range(rng.randrange(1, 30))]
        lengths = [
            len(qwen_tokenizer.decode(ids[: j + 1], skip_special_tokens=True)) for j in range(len(ids))
        ]
        if lengths != sorted(lengths):
            continue  # a split multi-byte character shrank a prefix: no token owns a position there
        for char in range(lengths[-1]):
            assert model._token_at(ids, char) == next(j for j, n in enumerate(lengths) if n > char)


def test_forced_prefix_follows_the_tokenizer(qwen_tokenizer):
    head, token = forced_answer_prefix(qwen_tokenizer, "A")
    assert (head, qwen_tokenizer.convert_ids_to_tokens(token)) == ("<answer", ">A")
    tiny_tok = tiny.build_tokenizer(CORPUS, vocab_size=400)  # `<answer>` is one added token there
    head, token = forced_answer_prefix(tiny_tok, "A")
    assert (head, tiny_tok.convert_ids_to_tokens(token)) == ("<answer>", "A")


@pytest.mark.parametrize(
    "options",
    [{"dtype": "float64"}, {"device": "gpu:0"}, {"temperature": -1.0}, {"temperature": float("nan")}]
    + [{"temperature": True}, {"sample_seed": 1.5}]
    + ([] if torch.cuda.is_available() else [{"device": "cuda:1"}]),
)
def test_bad_options_are_usage_errors(options):
    with pytest.raises(UsageError):
        HFModel.from_pretrained("unused/never-loaded", **options)


def test_a_prompt_longer_than_the_context_is_its_own_error_before_any_forward_pass(tiny_ckpt):
    """Issue #19: one huge question made its whole batch pad to it (a 202 GB allocation). It must be
    that prompt's error, found from its token count before the model runs; the rest still answer."""
    model = HFModel.from_pretrained(str(tiny_ckpt), device="cpu")
    limit = model.model.config.get_text_config().max_position_embeddings
    seen = []
    real_generate = model.model.generate

    def spy(**kwargs):
        seen.append(kwargs["input_ids"].shape[1])
        return real_generate(**kwargs)

    model.model.generate = spy
    ok = prompts()
    long = Prompt(
        "long", "base", "Where is it? " * limit + "\nA. left\nB. right", None, ("left", "right"), "A"
    )
    out = model.generate([ok[0], long, ok[2]], max_new_tokens=4)
    assert out[1].error is not None and "too long" in out[1].error and str(limit) in out[1].error
    assert out[0].error is None and out[2].error is None
    assert seen and max(seen) <= limit  # the long prompt never reached the model
    # a 1 MB question is refused at once, without tokenizing it
    huge = Prompt("huge", "base", "x" * 1_000_000, None, ("left", "right"), "A")
    seen.clear()
    start = time.perf_counter()
    (gen,) = model.generate([huge], max_new_tokens=4)
    assert "too long" in gen.error and time.perf_counter() - start < 1.0 and not seen
    # the limit can be set lower than the model's own
    tight = HFModel.from_pretrained(str(tiny_ckpt), device="cpu", max_prompt_tokens=8)
    assert all("too long" in g.error for g in tight.generate(ok, max_new_tokens=4))
    with pytest.raises(UsageError, match="max_prompt_tokens"):
        HFModel.from_pretrained(str(tiny_ckpt), device="cpu", max_prompt_tokens=0)


def test_prompt_lengths_come_from_the_batchs_own_encoding(tiny_ckpt, monkeypatch):
    """The length check reads the processor's encoding of the batch: a prompt within the limit is
    not tokenized a second time; one over it (by its expanded encoding) is counted exactly, alone."""
    model = HFModel.from_pretrained(str(tiny_ckpt), device="cpu")
    limit = model.model.config.get_text_config().max_position_embeddings
    counted = []
    tokenizer = type(model.tokenizer)
    call = tokenizer.__call__

    def spy(self, text=None, *args, **kwargs):
        if isinstance(text, str):  # the processor tokenizes a batch, a list of texts
            counted.append(text)
        return call(self, text, *args, **kwargs)

    monkeypatch.setattr(tokenizer, "__call__", spy)
    assert all(g.error is None for g in model.generate(prompts(), max_new_tokens=4))
    assert counted == []
    long = Prompt("long", "base", "Where is it? " * limit + "\nA. left\nB. right", None, ("l", "r"), "A")
    out = model.generate([prompts()[0], long], max_new_tokens=4)
    assert out[0].error is None and "too long" in out[1].error
    assert counted == [model.prompt_text(long)]


def test_two_images_reach_the_tiny_model_in_order():
    """A two-image prompt renders two image placeholders and the processor gets its images in
    prompt order, batched with a one-image prompt; a broken second image fails only its prompt."""
    model = tiny.load_tiny(device="cpu")
    red, blue, green = (Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green"))
    user = "Which image is red?\nA. the first\nB. the second"
    two = Prompt("two", "base", user, red, ("the first", "the second"), "A", extra_images=(blue,))
    one = Prompt("one", "base", user, green, ("the first", "the second"), "A")
    broken = replace(two, sample_id="broken", extra_images=("/no/such/image.png",))
    placeholder = "<|vision_start|><|image_pad|><|vision_end|>"
    assert model.prompt_text(two).count(placeholder) == 2 and model.prompt_text(one).count(placeholder) == 1
    seen = []
    encode = model._encode
    model._encode = lambda texts, images: seen.append(images) or encode(texts, images)
    out = model.generate([two, broken, one], max_new_tokens=4)
    assert out[0].error is None and out[2].error is None and out[0].n_tokens > 0
    assert out[1].error.startswith("image: ") and "(image 2 of 2)" in out[1].error
    colours = [[im.getpixel((0, 0)) for im in row] for row in seen[0]]
    assert colours == [[(255, 0, 0), (0, 0, 255)], [(0, 128, 0)]]


def test_sampling_is_seeded_by_the_batch_and_leaves_torch_rng_alone():
    """temperature > 0 samples (as a GRPO policy samples): the same batch and sample_seed give the
    same completions; another seed gives others; greedy decoding is untouched; the letter
    probabilities are read at the sampled answer; torch's global generator is as it was."""
    from vlmstress.models.tiny import load_tiny

    prompts = [perturb(s, "base", 0) for s in synth.generate(24, seed=0, split="test")]
    greedy = load_tiny().generate(prompts, max_new_tokens=48)
    runs = {}
    for seed in (0, 0, 1):
        model = load_tiny(temperature=1.0, sample_seed=seed)
        torch.manual_seed(123)
        before = torch.get_rng_state()
        runs.setdefault(seed, []).append(model.generate(prompts, max_new_tokens=48))
        assert torch.equal(torch.get_rng_state(), before)
    first, again = runs[0]
    assert [g.text for g in first] == [g.text for g in again]
    assert [g.text for g in first] != [g.text for g in runs[1][0]]
    assert [g.text for g in first] != [g.text for g in greedy]  # 24 completions at temperature 1
    for g in first:
        answer = parse(g.text, ("a", "b", "c", "d")).answer
        if g.letter_probs and answer:
            assert abs(sum(g.letter_probs.values()) - 1) < 1e-5 and g.score_source == "generation"


def test_sampling_options_reach_the_command_line_and_the_run_identity(tmp_path, capsys):
    from vlmstress.cli import main

    out = tmp_path / "run"
    argv = ["eval", "--model", "tiny", "--data", "synth:4", "--variants", "base", "--out", str(out)]
    assert main([*argv, "--model-opt", "temperature=1.0", "--model-opt", "sample_seed=3"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_options"] == {"temperature": 1.0, "sample_seed": 3}
    capsys.readouterr()
    bad = tmp_path / "bad"
    argv[-1] = str(bad)
    assert main([*argv, "--model-opt", "temperature=-2"]) == 2  # one line, nothing created
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "temperature" in err[0] and not bad.exists()

"""The embedded tiny model's parts: the tokenizer (whole pieces, exact round trips), the Qwen chat
template, the image processor (16 image tokens per 64x64 image), the test-size Qwen2.5-VL model, its
safetensors checkpoint, and generation after an assistant prefill."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

from vlmstress.data import synth
from vlmstress.data.schema import Sample
from vlmstress.models import tiny
from vlmstress.models.base import chat_messages
from vlmstress.perturb import VARIANTS, perturb
from vlmstress.train.sft import corpus

# Every value an option of the synthetic benchmark can carry.
VALUES = [*synth.SHAPES, *synth.COLOURS, *synth.RELATIONS, *(str(i) for i in range(7))]
OPTION_LINES = [f"\n{ltr}. {v}" for ltr in "ABCD" for v in VALUES]
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
PLAIN = Sample(
    sample_id="plain-1",
    question="Qu'y a-t-il sur la table ? (über 2 Tassen, 3½ Löffel) 🍵",
    options=("a cup", "deux tasses", "nothing at all", "42 spoons"),
    target="B",
    image=Image.new("RGB", (64, 64), (10, 20, 30)),
)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    # 200 training samples: every option line of the benchmark (letter x value) occurs in it
    return corpus(n=200)


@pytest.fixture(scope="module")
def tok(texts):
    return tiny.build_tokenizer(texts)


@pytest.fixture(scope="module")
def processor(tok):
    return tiny.build_processor(tok)


@pytest.fixture(scope="module")
def prompts():
    samples = [*synth.generate(10, seed=1, split="test"), PLAIN]
    return [perturb(s, v, 0) for s in samples for v in VARIANTS]


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _single(tok, text: str) -> int:
    ids = _ids(tok, text)
    assert len(ids) == 1, f"{text!r} -> {tok.convert_ids_to_tokens(ids)}"
    return ids[0]


# --- tokenizer ------------------------------------------------------------------------------------


def _pieces(tok, text: str) -> list[str]:
    """How the pre-tokenizer cuts `text` before BPE, as plain strings."""
    cut = tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
    return [tok.backend_tokenizer.decoder.decode([p]) for p, _ in cut]


def test_pre_tokenizer_cuts_option_lines_value_words_and_digits_whole(tok):
    """The cut does not depend on training: each option line, value word and digit is a piece."""
    text = "Where is the square relative to the circle?\nA. left of\nC. below\nB. 12 (C) row 3\nThink."
    pieces = _pieces(tok, text)
    assert "".join(pieces) == text
    # an option line is one piece, whatever it holds, up to the end of its line
    assert pieces[-6:-2] == ["\nA. left of", "\nC. below", "\nB. 12 (C) row 3", "\n"]
    sentence = "So the square is left of the circle (C) at row 31 col 4, right? I count 3."
    pieces = _pieces(tok, sentence)
    assert "".join(pieces) == sentence
    # a position is one piece (" row 3", " col 4"); a digit elsewhere is a piece of its own
    for piece in ["square", "left of", "circle", " (C)", " row 3", "1", " col 4", ",", "?", "3"]:
        assert piece in pieces, pieces
    assert "right" in "".join(pieces) and "right of" not in pieces  # a value word only when whole
    # a hedged reasoning's option line ends before the hedge, so it is the plain line's piece
    hedged = "The answer is:\nB. above but I think The square"
    assert "\nB. above" in _pieces(tok, hedged)


def test_option_lines_values_digits_and_tags_are_single_tokens(tok, texts):
    assert all(any(line in t for t in texts) for line in OPTION_LINES)  # the corpus holds them all
    line_ids = {line: _single(tok, line) for line in OPTION_LINES}
    assert len(set(line_ids.values())) == len(OPTION_LINES)
    _single(tok, "\nE. I'm not sure")
    for word in VALUES:
        word_id = _single(tok, word)
        # the same token wherever the word stands in a sentence
        assert word_id in _ids(tok, f"The square is {word} the circle.")
        assert word_id in _ids(tok, f"I count {word}, so")
    for digit in "0123456789":
        _single(tok, digit)
    positions = [f" {axis} {i}" for axis in ("row", "col") for i in range(1, 5)]
    position_ids = [_single(tok, p) for p in positions]
    assert len(set(position_ids)) == len(positions)
    assert _ids(tok, "is at row 3 col 4.")[-3:] == [
        _single(tok, " row 3"),
        _single(tok, " col 4"),
        _single(tok, "."),
    ]
    for role in ("user", "assistant"):  # the chat template's role names
        _single(tok, role)
    for tag in TAGS:
        _single(tok, tag)
    assert _ids(tok, "<think>x</think><answer>B</answer>")[0] == tok.convert_tokens_to_ids("<think>")
    for special in tiny.SPECIAL_TOKENS:
        assert tok.convert_ids_to_tokens(_single(tok, special)) == special


def test_option_line_in_a_prompt_is_one_token(tok, prompts):
    for p in prompts:
        ids = _ids(tok, p.user)
        for ltr, text in zip(p.option_letters, p.options):
            line = f"\n{ltr}. {text}"
            if line in OPTION_LINES:
                assert _single(tok, line) in ids, (line, p.user)


def test_round_trip_is_exact_on_every_variant(tok, processor, prompts):
    assert {p.variant for p in prompts} == set(VARIANTS)
    for p in prompts:
        for text in (p.user, p.prefill, p.user + p.prefill):
            assert tok.decode(_ids(tok, text)) == text
        rendered = processor.apply_chat_template(chat_messages(p), tokenize=False)
        assert tok.decode(_ids(tok, rendered)) == rendered
    for odd in ["  two  spaces\t\ttabs\n\n\nnewlines ", "A.B. (A)(B) <answer> B </answer>", "ÿ\x00\u200b"]:
        assert tok.decode(_ids(tok, odd)) == odd


def test_decoding_keeps_the_tags_and_drops_the_chat_specials(tok):
    completion = "<think>The square is above.</think><answer>B</answer>"
    ids = _ids(tok, completion + "<|im_end|><|endoftext|>")
    assert tok.decode(ids, skip_special_tokens=True) == completion
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.padding_side == "left"


# --- chat template and processor --------------------------------------------------------------------


def test_chat_template_is_qwens_form(tok, processor):
    p = perturb(synth.generate(1, seed=0)[0], "wrong_think", 0)
    want = (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        f"{p.user}<|im_end|>\n<|im_start|>assistant\n"
    )
    messages = chat_messages(p, with_prefill=False)
    assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == want
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == want
    assert processor.apply_chat_template(messages, tokenize=False) == want.removesuffix(
        "<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(with_system, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    # the prefill is the assistant turn's content
    full = processor.apply_chat_template(chat_messages(p), tokenize=False)
    assert f"<|im_start|>assistant\n{p.prefill}<|im_end|>\n" in full


def test_processor_turns_a_64px_image_into_16_image_tokens(tok, processor):
    s = synth.generate(2, seed=0)
    text = processor.apply_chat_template(chat_messages(perturb(s[0], "base", 0)), add_generation_prompt=True)
    text = text if isinstance(text, str) else tok.decode(text)
    short = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
    enc = processor(text=[text, short], images=[s[0].image, s[1].image], return_tensors="pt", padding=True)
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert ((enc["input_ids"] == pad).sum(dim=1) == 16).all()
    assert "mm_token_type_ids" in enc
    assert torch.equal(enc["mm_token_type_ids"].bool(), enc["input_ids"] == pad)
    assert enc["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 8]]
    assert tuple(enc["pixel_values"].shape) == (2 * 64, 3 * 2 * 8 * 8)
    # left padding: the short row is padded at its start
    assert enc["attention_mask"][1, 0] == 0 and enc["input_ids"][1, 0] == tok.pad_token_id


# --- the model, its checkpoint, generation ----------------------------------------------------------


@pytest.fixture(scope="module")
def model(tok):
    return tiny.new_model(tok, size="test", seed=0)


def test_new_model_is_a_test_size_qwen2_5_vl(tok, model):
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    text, vision = model.config.text_config, model.config.vision_config
    size = tiny.SIZES["test"]
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (
        size["hidden"],
        size["layers"],
        size["heads"],
    )
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size) == (1, 16, size["hidden"])
    assert text.vocab_size == len(tok) == model.get_input_embeddings().num_embeddings
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert text.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert sum(p.numel() for p in model.parameters()) < 200_000
    same = tiny.new_model(tok, size="test", seed=0).state_dict()
    other = tiny.new_model(tok, size="test", seed=1).state_dict()
    assert all(torch.equal(v, same[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, other[k]) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model, processor):
    out = tmp_path_factory.mktemp("tiny-ckpt")
    tiny.save(model, processor, out)
    return out


def test_save_and_load_round_trip_weights_exactly_through_safetensors(checkpoint, model, tok):
    from safetensors.torch import load_file

    files = sorted(p.name for p in checkpoint.iterdir())
    assert "model.safetensors" in files and "config.json" in files
    assert "tokenizer.json" in files and "preprocessor_config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    stored = load_file(checkpoint / "model.safetensors")
    params = model.state_dict()
    assert stored and all(torch.equal(t, params[k]) for k, t in stored.items() if k in params)

    loaded = tiny.load_tiny(checkpoint)
    assert loaded.name == f"tiny:{checkpoint}"
    assert isinstance(loaded.model, Qwen2_5_VLForConditionalGeneration)
    got = loaded.model.state_dict()
    assert set(got) == set(params)
    for k, v in params.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    # the tokenizer and the image processor come back the same
    text = perturb(synth.generate(1, seed=2)[0], "wrong_think_hedge", 0)
    assert loaded.tokenizer.encode(text.user + text.prefill) == tok.encode(text.user + text.prefill)
    assert loaded.tokenizer.decode(_ids(tok, "<answer>B</answer><|im_end|>"), skip_special_tokens=True) == (
        "<answer>B</answer>"
    )
    preprocessor = json.loads((checkpoint / "preprocessor_config.json").read_text())
    assert (preprocessor["patch_size"], preprocessor["merge_size"]) == (8, 2)


def test_generation_continues_after_the_assistant_prefill(checkpoint, tok):
    loaded = tiny.load_tiny(checkpoint)
    sample = synth.generate(1, seed=0)[0]
    base, wrong = perturb(sample, "base", 0), perturb(sample, "wrong_think_hedge", 0)
    assert wrong.prefill and not wrong.prefill.endswith("</think>")

    # the prefill is appended to the generation prompt: the model continues the assistant turn
    base_text, wrong_text = loaded.prompt_text(base), loaded.prompt_text(wrong)
    assert wrong_text == base_text + wrong.prefill and base_text.endswith("<|im_start|>assistant\n")
    enc_base = loaded.processor(text=[base_text], images=[sample.image], return_tensors="pt")
    enc = loaded.processor(text=[wrong_text], images=[sample.image], return_tensors="pt")
    ids, n_base = enc["input_ids"][0].tolist(), enc_base["input_ids"].shape[1]
    assert ids[:n_base] == enc_base["input_ids"][0].tolist()
    assert tok.decode(ids[n_base:]) == wrong.prefill and tok.eos_token_id not in ids[n_base:]

    [gen_base, gen] = loaded.generate([base, wrong], max_new_tokens=6)
    assert gen.error is None and 0 < gen.n_tokens <= 6
    assert not gen.text.startswith(wrong.prefill[:10])  # the completion excludes the prefill
    # the completion is what greedy decoding gives from exactly that prompt
    with torch.no_grad():
        out = loaded.model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    stop = next((k for k, t in enumerate(new) if t == tok.eos_token_id), len(new))
    assert gen.text == tok.decode(new[:stop], skip_special_tokens=True)
    # and the prefill conditions it: the letter distribution differs from the base prompt's
    for g in (gen_base, gen):
        assert set(g.letter_probs) == set("ABCD") and sum(g.letter_probs.values()) == pytest.approx(1.0)
    assert gen.letter_probs != gen_base.letter_probs

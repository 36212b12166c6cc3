"""Augmentation: rates, determinism, the evaluation's perturbations, and the prefill chat template."""

from __future__ import annotations

from collections import Counter

import pytest

from vlmstress.data import synth
from vlmstress.data.schema import Sample
from vlmstress.models import tiny
from vlmstress.perturb import perturb
from vlmstress.train.augment import (
    AUGMENT_VARIANTS,
    DEFAULT_RATES,
    augment,
    build_dataset,
    choose_variant,
    prefill_chat_template,
    prompt_messages,
)

N = 40_000
# Four standard deviations of a share estimated from N draws at p = 0.5 (the widest case).
TOL = 4 * (0.25 / N) ** 0.5


def shares(rates, seed=0):
    counts = Counter(choose_variant(f"sample-{i}", seed, rates) for i in range(N))
    return {v: counts[v] / N for v in (*rates, "base")}


def test_default_rates_on_a_large_sample():
    got = shares(DEFAULT_RATES)
    for v in AUGMENT_VARIANTS:
        assert got[v] == pytest.approx(0.1, abs=TOL), v
    assert got["base"] == pytest.approx(0.6, abs=TOL)


def test_configured_rates_on_a_large_sample():
    rates = {"correct_think": 0.0, "wrong_think": 0.5, "correct_caption": 0.05, "wrong_caption": 0.25}
    got = shares(rates, seed=3)
    for v, p in rates.items():
        assert got[v] == pytest.approx(p, abs=TOL), v
    assert got["base"] == pytest.approx(0.2, abs=TOL)


def test_draw_is_deterministic_per_seed_and_sample():
    ids = [f"s{i}" for i in range(300)]
    first = [choose_variant(i, 7) for i in ids]
    assert first == [choose_variant(i, 7) for i in ids]
    assert first != [choose_variant(i, 8) for i in ids]
    with pytest.raises(ValueError):
        choose_variant("s", 0, {"wrong_think": 0.7, "wrong_caption": 0.4})


def test_prompts_come_from_the_evaluation_perturbations():
    samples = synth.generate(30, seed=0, split="train")
    seen = set()
    for s in samples:
        prompt = augment(s, seed=1, rates={"wrong_think": 0.5, "correct_caption": 0.5})
        assert prompt == perturb(
            s, choose_variant(s.sample_id, 1, {"wrong_think": 0.5, "correct_caption": 0.5}), 1
        )
        seen.add(prompt.variant)
    assert seen == {"wrong_think", "correct_caption"}
    # an open-ended sample has no wrong option to argue for: it stays base
    open_ended = Sample(sample_id="o", question="What is shown?", answer_text="a cat")
    assert augment(open_ended, 0, {"wrong_think": 1.0}).variant == "base"


def test_dataset_rows_carry_the_prefill_as_the_final_assistant_message():
    samples = synth.generate(10, seed=0, split="train")
    ds = build_dataset(samples, seed=0, rates={"correct_think": 0.5, "wrong_caption": 0.5})
    assert set(ds.column_names) >= {"prompt", "images", "target", "options", "question", "variant"}
    for row, s in zip(ds, samples, strict=True):
        assert len(row["images"]) == 1 and row["images"][0].size == (64, 64)
        assert row["target"] == s.target and row["options"] == list(s.options)
        p = perturb(s, row["variant"], 0)
        assert row["prompt"] == prompt_messages(p)
        if row["variant"] == "correct_think":
            assert row["prompt"][-1] == {"role": "assistant", "content": p.prefill}
        else:
            assert [m["role"] for m in row["prompt"]] == ["user"]
            assert "Caption:" in row["prompt"][0]["content"]


# Qwen2.5-VL-7B-Instruct's chat template, as its processor ships it.
QWEN25VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny.build_tokenizer(
        ["Where is the circle? <think> </think> <answer> </answer>"] * 4, vocab_size=300
    )


@pytest.mark.parametrize("template", [tiny.CHAT_TEMPLATE, QWEN25VL_TEMPLATE], ids=["tiny", "qwen2.5-vl"])
@pytest.mark.parametrize("parts", [False, True], ids=["string-content", "content-parts"])
def test_prefill_template_continues_the_final_assistant_message(tokenizer, template, parts):
    wrapped = prefill_chat_template(template)
    assert prefill_chat_template(wrapped) == wrapped

    def render(messages, t, **kw):
        return tokenizer.apply_chat_template(messages, chat_template=t, tokenize=False, **kw)

    def msg(role, text):
        content = [{"type": "text", "text": text}] if parts else text
        if parts and role == "user":
            content = [{"type": "image"}, *content]
        return {"role": role, "content": content}

    user = [msg("user", "Where is the circle?")]
    prefilled = [*user, msg("assistant", "<think>It is left.</think>")]
    # TRL's generation path (add_generation_prompt) now gives what its forward path gives
    # (continue_final_message), and both end right after the prefill.
    generation = render(prefilled, wrapped, add_generation_prompt=True)
    assert generation == render(prefilled, template, continue_final_message=True)
    assert generation.endswith("assistant\n<think>It is left.</think>")
    # Everything else renders exactly as before.
    assert render(user, wrapped, add_generation_prompt=True) == render(
        user, template, add_generation_prompt=True
    )
    assert render(prefilled, wrapped) == render(prefilled, template)

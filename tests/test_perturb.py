"""The perturbation suite: each variant's prompt as the paper describes it (docs/paper.md), on
synthetic samples (reasoning and captions from the scene facts) and on plain ones (templated from
the option text); the misleading letter; purity; templates; the variant registry; where a variant
cannot apply."""

from __future__ import annotations

import copy
import random
from collections import Counter
from dataclasses import replace

import pytest
from PIL import Image

from vlmstress.data import synth
from vlmstress.data.schema import Sample
from vlmstress.errors import UsageError
from vlmstress.perturb import (
    ABSTAIN_OPTION,
    CAPTION_HEDGE,
    STOP_THINK,
    TEMPLATES,
    THINK_HEDGE,
    VARIANTS,
    NotApplicable,
    Prompt,
    misleading_letter,
    perturb,
    register_variant,
    resolve_variants,
)

ALL = [
    "base",
    "stop_think",
    "wrong_think",
    "wrong_think_hedge",
    "wrong_caption",
    "wrong_caption_hedge",
    "correct_think",
    "correct_caption",
    "abstain",
]
WRONG = {"wrong_think", "wrong_think_hedge", "wrong_caption", "wrong_caption_hedge"}
INSTRUCTION = "Think inside <think></think>, then give the option letter inside <answer></answer>."


def _plain(sample_id: str = "q-17", target: str = "C", question: str = "What is on the table?") -> Sample:
    return Sample(
        sample_id=sample_id,
        question=question,
        options=("a cup", "a plate", "a fork", "a knife"),
        target=target,
        image=Image.new("RGB", (8, 8), (1, 2, 3)),
    )


SYNTH = synth.generate(10, seed=0, split="test")  # two of each family
PLAIN = _plain()
SAMPLES = pytest.mark.parametrize("sample", [*SYNTH, PLAIN], ids=[*(s.sample_id for s in SYNTH), "plain"])


def _expected_think(sample: Sample, letter: str) -> str:
    text = sample.option_text(letter)
    if sample.facts is None:
        return f"Looking at the image, the answer to this question is {text}. So the answer is {letter}."
    return synth.think_text(sample, letter)


def _expected_caption(sample: Sample, letter: str) -> str:
    if sample.facts is None:
        return f"This picture shows {sample.option_text(letter)}."
    return synth.caption_text(sample, letter)


def _option_lines(options) -> list[str]:
    return [f"{ltr}. {text}" for ltr, text in zip("ABCDEFG", options)]


def _expected_user(sample: Sample, caption: str | None = None, options=None) -> str:
    lines = [] if caption is None else [f"Caption: {caption}"]
    return "\n".join([*lines, sample.question, *_option_lines(options or sample.options), INSTRUCTION])


def test_the_suite_is_the_papers_nine_variants_in_order():
    assert resolve_variants("all") == ALL
    assert list(VARIANTS)[:9] == ALL


# --- each variant's prompt ------------------------------------------------------------------------


@SAMPLES
def test_base(sample):
    p = perturb(sample, "base", 0)
    assert isinstance(p, Prompt) and p.variant == "base" and p.sample_id == sample.sample_id
    assert p.user == _expected_user(sample)
    assert p.prefill == "" and p.misleading is None and p.system is None
    assert p.options == sample.options and p.target == sample.target
    assert p.image is sample.image  # text only: the image is never touched


@SAMPLES
def test_stop_think_prefills_a_closed_think_block(sample):
    p = perturb(sample, "stop_think", 0)
    assert p.prefill == "<think>Okay let's see. This should be the final answer.</think>" == STOP_THINK
    assert p.user == _expected_user(sample) and p.misleading is None and p.image is sample.image


@SAMPLES
def test_wrong_think_argues_for_the_misleading_option(sample):
    p = perturb(sample, "wrong_think", 0)
    m = misleading_letter(sample, 0)
    assert p.misleading == m and m is not None and m != sample.target and m in sample.option_letters
    assert p.prefill == f"<think>{_expected_think(sample, m)}</think>"
    assert sample.option_text(m) in p.prefill and sample.option_text(sample.target) not in p.prefill
    assert p.user == _expected_user(sample) and p.target == sample.target and p.image is sample.image


@SAMPLES
def test_wrong_think_hedge_leaves_the_think_block_open_after_the_hedge(sample):
    p = perturb(sample, "wrong_think_hedge", 0)
    m = misleading_letter(sample, 0)
    assert p.misleading == m != sample.target
    assert p.prefill == f"<think>{_expected_think(sample, m)} but I think" and THINK_HEDGE == " but I think"
    assert "</think>" not in p.prefill
    assert p.user == _expected_user(sample)


@SAMPLES
def test_wrong_caption_suggests_the_misleading_option(sample):
    p = perturb(sample, "wrong_caption", 0)
    m = misleading_letter(sample, 0)
    assert p.misleading == m != sample.target
    caption = _expected_caption(sample, m)
    assert p.user == _expected_user(sample, caption)
    assert p.user.startswith(f"Caption: {caption}\n{sample.question}\n")
    assert sample.option_text(m) in caption and p.prefill == ""


@SAMPLES
def test_wrong_caption_hedge_adds_the_hedge_to_the_caption(sample):
    p = perturb(sample, "wrong_caption_hedge", 0)
    m = misleading_letter(sample, 0)
    assert p.misleading == m != sample.target
    caption = _expected_caption(sample, m).rstrip(".") + " but I could be wrong."
    assert CAPTION_HEDGE == " but I could be wrong."
    assert p.user == _expected_user(sample, caption) and p.prefill == ""


@SAMPLES
def test_correct_controls_point_to_the_target(sample):
    think = perturb(sample, "correct_think", 0)
    assert think.misleading is None
    assert think.prefill == f"<think>{_expected_think(sample, sample.target)}</think>"
    assert think.user == _expected_user(sample)
    caption = perturb(sample, "correct_caption", 0)
    assert caption.misleading is None and caption.prefill == ""
    assert caption.user == _expected_user(sample, _expected_caption(sample, sample.target))
    assert sample.option_text(sample.target) in caption.user.splitlines()[0]


@SAMPLES
def test_abstain_offers_im_not_sure_as_one_more_option(sample):
    p = perturb(sample, "abstain", 0)
    assert ABSTAIN_OPTION == "I'm not sure"
    assert p.options == (*sample.options, "I'm not sure") and p.option_letters == list("ABCDE")
    assert p.user == _expected_user(sample, options=p.options)
    assert "\nE. I'm not sure\n" in p.user
    assert p.target == sample.target and p.misleading is None and p.prefill == ""


@SAMPLES
def test_misleading_and_hedges_only_where_the_paper_puts_them(sample):
    prompts = {v: perturb(sample, v, 3) for v in ALL}
    for v, p in prompts.items():
        text = p.user + p.prefill
        assert (p.misleading is not None) == (v in WRONG), v
        if v in WRONG:
            assert p.misleading == misleading_letter(sample, 3) != sample.target
        assert ("but I think" in text) == (v == "wrong_think_hedge"), v
        assert ("but I could be wrong" in text) == (v == "wrong_caption_hedge"), v
        assert ("Caption:" in p.user) == (v in {"wrong_caption", "wrong_caption_hedge", "correct_caption"})
        assert p.prefill.startswith("<think>") == (
            v in {"stop_think", "wrong_think", "wrong_think_hedge", "correct_think"}
        )
        assert ("I'm not sure" in p.user) == (v == "abstain"), v
        assert p.image is sample.image and p.target == sample.target and p.variant == v
    # the wrong_* variants all argue for the same letter
    assert len({prompts[v].misleading for v in WRONG}) == 1


def test_synthetic_reasoning_states_scene_facts_and_plain_reasoning_uses_the_option_text():
    spatial = SYNTH[0]
    assert spatial.family == "spatial"
    m = misleading_letter(spatial, 0)
    value = spatial.option_text(m)
    think = perturb(spatial, "wrong_think", 0).prefill
    claim = f"the {spatial.facts['subject']} is {value} the {spatial.facts['anchor']}."
    assert claim in think.lower()
    assert think.endswith(f"The answer is:\n{m}. {value}</think>")
    assert "Looking at the image" not in think
    plain = perturb(PLAIN, "wrong_think", 0)
    assert plain.prefill.startswith("<think>Looking at the image, the answer to this question is ")


# --- the misleading letter ----------------------------------------------------------------------------


def test_misleading_letter_is_a_function_of_sample_id_and_seed():
    a = _plain("item-9", question="one question")
    b = _plain("item-9", question="another question entirely")
    assert misleading_letter(a, 0) == misleading_letter(b, 0)
    for seed in range(5):
        assert misleading_letter(a, seed) == misleading_letter(a, seed)
    # global random state does not matter
    random.seed(1)
    first = [misleading_letter(_plain(f"s{i}"), 0) for i in range(30)]
    random.seed(2)
    assert [misleading_letter(_plain(f"s{i}"), 0) for i in range(30)] == first
    # the seed and the id both move it
    assert [misleading_letter(_plain(f"s{i}"), 1) for i in range(30)] != first
    assert len(set(first)) == 3


@pytest.mark.parametrize("target", ["A", "C"])
def test_misleading_letter_is_uniform_over_the_wrong_letters(target):
    n = 1200
    counts = Counter(misleading_letter(_plain(f"id-{i}", target=target), 0) for i in range(n))
    assert set(counts) == set("ABCD") - {target}
    for c in counts.values():  # expected 400, sd ~16
        assert 330 <= c <= 470, counts


def test_misleading_letter_on_the_synthetic_set_is_never_the_target():
    samples = synth.generate(60, seed=1, split="test")
    letters = [misleading_letter(s, 0) for s in samples]
    assert all(m is not None and m != s.target for m, s in zip(letters, samples))
    assert len(set(letters)) == 4


# --- purity ------------------------------------------------------------------------------------------


@SAMPLES
def test_every_variant_is_a_pure_function(sample):
    before = copy.deepcopy((sample.question, sample.options, sample.target, sample.facts))
    pixels = sample.image.tobytes()
    first = {v: perturb(sample, v, 5) for v in ALL}
    random.seed(123)  # no hidden dependence on global random state
    second = {v: perturb(sample, v, 5) for v in ALL}
    assert first == second
    # and the sample is left as it was
    assert (sample.question, sample.options, sample.target, sample.facts) == before
    assert sample.image.tobytes() == pixels
    # the variant functions take the misleading letter as an argument and use it as given
    for v in WRONG:
        other = next(ltr for ltr in "ABCD" if ltr not in (sample.target, first[v].misleading))
        p = VARIANTS[v](sample, other, TEMPLATES["vlmstress"])
        assert p.misleading == other and p == VARIANTS[v](sample, other, TEMPLATES["vlmstress"])
        assert p != first[v]


# --- templates ----------------------------------------------------------------------------------


def test_templates_render_the_options_their_way():
    s = PLAIN
    vl = perturb(s, "base", 0, TEMPLATES["vlmstress"]).user
    assert vl == "What is on the table?\nA. a cup\nB. a plate\nC. a fork\nD. a knife\n" + INSTRUCTION
    mmb = perturb(s, "base", 0, TEMPLATES["mmbench"]).user
    assert mmb == (
        "What is on the table?\nA. a cup\nB. a plate\nC. a fork\nD. a knife\n"
        "Answer with the option's letter from the given choices directly."
    )
    mme = perturb(s, "abstain", 0, TEMPLATES["mme-realworld"]).user
    assert mme == (
        "What is on the table?\n(A) a cup\n(B) a plate\n(C) a fork\n(D) a knife\n(E) I'm not sure\n"
        "The best answer is:"
    )
    cap = perturb(s, "correct_caption", 0, TEMPLATES["mme-realworld"]).user
    assert cap.startswith("Caption: This picture shows a fork.\nWhat is on the table?\n(A) a cup\n")
    # the template changes the user turn only
    a, b = perturb(s, "wrong_think", 0, TEMPLATES["mmbench"]), perturb(s, "wrong_think", 0)
    assert (a.prefill, a.misleading, a.options) == (b.prefill, b.misleading, b.options) and a.user != b.user


def test_question_whitespace_is_stripped():
    p = perturb(_plain(question="  What is on the table?\n"), "base", 0)
    assert p.user.startswith("What is on the table?\nA. a cup\n")


# --- the registry ------------------------------------------------------------------------------------


def test_resolve_variants_lists_and_errors():
    assert resolve_variants("base,wrong_think") == ["base", "wrong_think"]
    assert resolve_variants(" abstain , base ,abstain") == ["abstain", "base"]  # order kept, deduplicated
    assert resolve_variants(" all ") == ALL
    with pytest.raises(UsageError, match="bogus"):
        resolve_variants("base,bogus")
    for empty in ("", " , ,"):
        with pytest.raises(UsageError):
            resolve_variants(empty)


@pytest.fixture
def registry(registries):
    return VARIANTS


def test_register_variant_adds_a_variant_usable_by_name(registry):
    with pytest.raises(UsageError):
        resolve_variants("shout")

    @register_variant("shout")
    def shout(sample, misleading, template):
        return replace(
            VARIANTS["base"](sample, misleading, template),
            variant="shout",
            user=sample.question.upper(),
        )

    assert resolve_variants("base,shout") == ["base", "shout"]
    assert resolve_variants("all") == [*ALL, "shout"]
    p = perturb(PLAIN, "shout", 0)
    assert p.variant == "shout" and p.user == "WHAT IS ON THE TABLE?" and p.options == PLAIN.options


def test_register_variant_refuses_a_taken_or_unselectable_name(registry):
    before = dict(registry)
    for name in ("base", "wrong_think"):
        with pytest.raises(ValueError, match="already registered"):
            register_variant(name)
    for name in ("all", "a,b"):
        with pytest.raises(ValueError, match="cannot be selected with --variants"):
            register_variant(name)
    for name in ("two words", ""):
        with pytest.raises(ValueError, match="non-empty string without spaces"):
            register_variant(name)
    assert registry == before  # nothing replaced, nothing added


def test_a_variant_must_name_its_prompts_after_itself(registry):
    # A prompt under another name would never count as done on a resume.
    register_variant("misnamed")(
        lambda sample, misleading, template: VARIANTS["base"](sample, misleading, template)
    )
    with pytest.raises(ValueError, match="misnamed.*'base'"):
        perturb(PLAIN, "misnamed", 0)


# --- where a variant cannot apply --------------------------------------------------------------------


def test_open_ended_sample_only_gets_base_and_stop_think():
    open_ended = Sample(sample_id="o1", question="How many cups?", answer_text="3")
    assert misleading_letter(open_ended, 0) is None
    assert perturb(open_ended, "base", 0).user == "How many cups?\n" + INSTRUCTION
    assert perturb(open_ended, "stop_think", 0).prefill == STOP_THINK
    for v in ALL[2:]:
        with pytest.raises(NotApplicable):
            perturb(open_ended, v, 0)


def test_sample_without_a_target_cannot_be_misled_or_controlled():
    unknown = Sample(sample_id="u1", question="Which?", options=("x", "y", "z"), target=None)
    assert misleading_letter(unknown, 0) is None
    for v in ("wrong_think", "wrong_think_hedge", "wrong_caption", "wrong_caption_hedge"):
        with pytest.raises(NotApplicable):
            perturb(unknown, v, 0)
    for v in ("correct_think", "correct_caption"):
        with pytest.raises(NotApplicable):
            perturb(unknown, v, 0)
    assert perturb(unknown, "abstain", 0).options == ("x", "y", "z", "I'm not sure")


def test_single_option_sample_has_no_wrong_option():
    one = Sample(sample_id="s1", question="Which?", options=("only",), target="A")
    assert misleading_letter(one, 0) is None
    for v in WRONG:
        with pytest.raises(NotApplicable):
            perturb(one, v, 0)
    assert perturb(one, "correct_think", 0).prefill.endswith("So the answer is A.</think>")


def test_not_applicable_is_a_value_error():
    assert issubclass(NotApplicable, ValueError)


def test_a_multi_image_sample_keeps_every_image_under_every_variant():
    """Only text changes: both images reach every variant's prompt, in order, and the generic
    reasoning and captions speak of the images (the options may name "the first image")."""
    first, second = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    sample = Sample(
        "two",
        "Which image shows the red square?",
        ("the first image", "the second image"),
        "A",
        image=first,
        extra_images=(second,),
    )
    for variant in ALL:
        prompt = perturb(sample, variant, seed=0)
        assert prompt.images == (first, second) and prompt.image is first, variant
    caption = perturb(sample, "wrong_caption", seed=0).user.splitlines()[0]
    assert caption == "Caption: These pictures show the second image."
    assert perturb(sample, "wrong_think", seed=0).prefill.startswith("<think>Looking at the images,")
    one = replace(sample, extra_images=())  # one image: the wording of every one-image run so far
    assert perturb(one, "wrong_caption", seed=0).user.startswith("Caption: This picture shows")
    assert perturb(one, "base", seed=0).images == (first,)
    with pytest.raises(ValueError, match="first image"):
        Sample("x", "q", image=None, extra_images=(second,))

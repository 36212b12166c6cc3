"""The perturbation suite: every variant is a pure function (sample, misleading letter) -> Prompt.

Only text changes; the images are never touched (all of a multi-image sample's pass through, in
order). Reasoning and captions for synthetic samples are written from their scene facts
(vlmstress.data.synth), for other data from the option text, in words that fit one image or several.
Users add variants with `register_variant`, and prompt templates with `register_template`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from vlmstress.data.schema import Prompt, Sample, letters  # Prompt: importable from here, as before
from vlmstress.errors import UsageError
from vlmstress.registry import Registry

STOP_THINK = "<think>Okay let's see. This should be the final answer.</think>"
THINK_HEDGE = " but I think"
CAPTION_HEDGE = " but I could be wrong."
ABSTAIN_OPTION = "I'm not sure"


@dataclass(frozen=True)
class Template:
    """How the user turn is written: harnesses differ, and the template is part of the run config."""

    name: str
    instruction: str
    option_format: str = "{letter}. {text}"
    caption_format: str = "Caption: {caption}"


TEMPLATES: Registry[Template] = Registry("template")


def register_template(template: Template) -> Template:
    """Add a prompt template under its `name`, selectable with `--template name` (and a GRPO
    config's `template:`); a name already taken is a ValueError."""
    if not isinstance(template, Template):
        raise TypeError(f"register_template takes a vlmstress.perturb.Template, got {template!r}")
    return TEMPLATES.add(template.name, template)


register_template(
    Template(
        "vlmstress", "Think inside <think></think>, then give the option letter inside <answer></answer>."
    )
)
register_template(Template("mmbench", "Answer with the option's letter from the given choices directly."))
register_template(Template("mme-realworld", "The best answer is:", option_format="({letter}) {text}"))


def render_user(
    question: str, options: tuple[str, ...], template: Template, caption: str | None = None
) -> str:
    lines = []
    if caption is not None:
        lines.append(template.caption_format.format(caption=caption))
    lines.append(question.strip())
    lines += [
        template.option_format.format(letter=ltr, text=t) for ltr, t in zip(letters(len(options)), options)
    ]
    if template.instruction:
        lines.append(template.instruction)
    return "\n".join(lines)


def misleading_letter(sample: Sample, seed: int) -> str | None:
    """The wrong option a wrong_* variant argues for: drawn from the sample id and the seed only,
    so every rerun, model and variant of one study agrees on it."""
    wrong = [ltr for ltr in sample.option_letters if ltr != sample.target]
    if not wrong or sample.target is None:
        return None
    # random.Random seeded with a str hashes it with SHA-512: stable across processes and platforms.
    return random.Random(f"misleading:{seed}:{sample.sample_id}").choice(wrong)


def think_text(sample: Sample, letter: str) -> str:
    """Reasoning that argues for option `letter`, in the words a model would use."""
    if sample.facts is not None:
        from vlmstress.data import synth

        return synth.think_text(sample, letter)
    text = sample.option_text(letter)
    seen = "images" if sample.extra_images else "image"
    return f"Looking at the {seen}, the answer to this question is {text}. So the answer is {letter}."


def caption_text(sample: Sample, letter: str) -> str:
    """A caption of the image (or images) that suggests option `letter`."""
    if sample.facts is not None:
        from vlmstress.data import synth

        return synth.caption_text(sample, letter)
    if sample.extra_images:
        # A caption of several images cannot say which one shows what: the option text may itself
        # name "the second image", so the caption speaks of all of them.
        return f"These pictures show {sample.option_text(letter)}."
    return f"This picture shows {sample.option_text(letter)}."


class NotApplicable(ValueError):
    """The variant needs something the sample lacks (say, options for a wrong option)."""


VariantFn = Callable[[Sample, "str | None", Template], Prompt]


def _selectable(name: str) -> str | None:
    # `all` and names holding commas could not be selected with --variants
    return "cannot be selected with --variants" if name == "all" or "," in name else None


VARIANTS: Registry[VariantFn] = Registry("variant", check_name=_selectable)


def register_variant(name: str) -> Callable[[VariantFn], VariantFn]:
    """Add a variant under `name`; it becomes selectable with `--variants name`.

    A name already taken is a ValueError: silently replacing a variant would change what every run
    that names it measures.
    """
    return VARIANTS.register(name)


def build_prompt(
    sample: Sample,
    variant: str,
    template: Template,
    *,
    caption: str | None = None,
    prefill: str = "",
    misleading: str | None = None,
    options: tuple[str, ...] | None = None,
) -> Prompt:
    """The Prompt of `sample` under `variant`, the user turn rendered by `template`: what every
    variant, the shipped ones and a user's (register_variant), builds its prompt with."""
    options = sample.options if options is None else options
    return Prompt(
        sample_id=sample.sample_id,
        variant=variant,
        user=render_user(sample.question, options, template, caption),
        image=sample.image,
        extra_images=sample.extra_images,
        options=options,
        target=sample.target,
        misleading=misleading,
        prefill=prefill,
    )


def _need(letter: str | None, variant: str) -> str:
    if letter is None:
        raise NotApplicable(f"{variant} needs a multiple-choice sample with a target")
    return letter


@register_variant("base")
def base(sample: Sample, misleading: str | None, template: Template) -> Prompt:
    return build_prompt(sample, "base", template)


@register_variant("stop_think")
def stop_think(sample: Sample, misleading: str | None, template: Template) -> Prompt:
    return build_prompt(sample, "stop_think", template, prefill=STOP_THINK)


@register_variant("wrong_think")
def wrong_think(sample: Sample, misleading: str | None, template: Template) -> Prompt:
    ltr = _need(misleading, "wrong_think")
    return build_prompt(
        sample, "wrong_think", template, misleading=ltr, prefill=f"<think>{think_text(sample, ltr)}</think>"
    )


@register_variant("wrong_think_hedge")
def wrong_think_hedge(sample: Sample, misleading: str | None, template: Template) -> Prompt:
    # Our reading of the paper: the think block is left open after the hedge, so the model may recover.
    ltr = _need(misleading, "wrong_think_hedge")
    return build_prompt(
        sample,
        "wrong_think_hedge",
        template,
        misleading=ltr,
        prefill=f"<think>{think_text(sample, ltr)}{THINK_HEDGE}",
    )


@register_variant("wrong_caption")
def wrong_caption(sample: Sample, misleading: str | None, template: Template) -> Prompt:
    ltr = _need(misleading, "wrong_caption")
    return build_prompt(sample, "wrong_caption", template, misleading=ltr, caption=caption_text(sample, ltr))


@register_variant("wrong_caption_hedge")
def wrong_caption_hedge(sample: Sample, misleading: str | None, template: Template) -> Prompt:
    ltr = _need(misleading, "wrong_caption_hedge")
    caption = caption_text(sample, ltr).rstrip(".") + CAPTION_HEDGE
    return build_prompt(sample, "wrong_caption_hedge", template, misleading=ltr, caption=caption)


@register_variant("correct_think")
def correct_think(sample: Sample, misleading: str | None, template: Template) -> Prompt:
    ltr = _need(sample.target, "correct_think")
    return build_prompt(
        sample, "correct_think", template, prefill=f"<think>{think_text(sample, ltr)}</think>"
    )


@register_variant("correct_caption")
def correct_caption(sample: Sample, misleading: str | None, template: Template) -> Prompt:
    ltr = _need(sample.target, "correct_caption")
    return build_prompt(sample, "correct_caption", template, caption=caption_text(sample, ltr))


@register_variant("abstain")
def abstain(sample: Sample, misleading: str | None, template: Template) -> Prompt:
    if sample.is_open_ended:
        raise NotApplicable("abstain needs a multiple-choice sample")
    return build_prompt(sample, "abstain", template, options=(*sample.options, ABSTAIN_OPTION))


def resolve_variants(spec: str) -> list[str]:
    """`all` or a comma list of registered names, in the order given; an unknown name is a UsageError."""
    if spec.strip() == "all":
        return list(VARIANTS)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UsageError(f"variants: none given (known: {', '.join(VARIANTS)})")
    VARIANTS.require(names)
    return list(dict.fromkeys(names))


def perturb(sample: Sample, variant: str, seed: int, template: Template = TEMPLATES["vlmstress"]) -> Prompt:
    """The prompt of `sample` under `variant`; raises NotApplicable where the variant cannot apply."""
    prompt = VARIANTS[variant](sample, misleading_letter(sample, seed), template)
    # Records are keyed by prompt.variant: a user variant naming its prompts otherwise would never
    # count as done on a resume, and its metrics would land under another name.
    if prompt.variant != variant:
        raise ValueError(f"variant {variant!r} returned a prompt named {prompt.variant!r}")
    return prompt


def with_system(prompt: Prompt, system: str | None) -> Prompt:
    return replace(prompt, system=system)

"""Adversarial prompt augmentation for GRPO, and how its think prefills reach TRL.

Each training prompt becomes correct_think, wrong_think, correct_caption or wrong_caption with
probability 0.1 each (configurable), else stays base; the variant is drawn from the seed and the
sample id alone, so a rerun, a resumed run and every epoch agree on it. The prompt itself is built
by the very perturbation functions evaluation uses (`vlmstress.perturb.perturb`), so training and
evaluation cannot drift apart in wording. Users add augmentation kinds with `register_augmentation`.

Prefills. A think prefill is the prompt's final *assistant* message, for the policy to continue.
TRL 1.16's GRPOTrainer does not continue it by itself (checked in its source and by running it):
it renders generation prompts with `apply_chat_template(..., add_generation_prompt=True)`
unconditionally (`_tokenize_prompts`), which closes the prefilled turn and opens a new assistant
turn, while the forward pass renders the same prompt with `continue_final_message=True`
(`trl.data_utils.apply_chat_template`); for a VLM the two token counts then differ and the 3-D rope
index fails (`IndexError: The shape of the mask [63] ... does not match ... [51]`). Passing
`continue_final_message` through `chat_template_kwargs` is refused by transformers next to
`add_generation_prompt`. So the prefill stays in the final assistant message, and the processor's
chat template is wrapped (`prefill_chat_template`) so that a conversation ending in an assistant
message, rendered with a generation prompt, comes out *open* after the prefill: exactly the text
`continue_final_message=True` gives, on both of TRL's paths (and vLLM's, which takes the same ids).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vlmstress.data.schema import Sample
from vlmstress.perturb import TEMPLATES, NotApplicable, Prompt, Template, perturb, with_system
from vlmstress.registry import Registry

AugmentFn = Callable[[Sample, int, Template], Prompt]


@dataclass(frozen=True)
class Augmentation:
    """An augmentation kind: `make(sample, seed, template)` builds the training prompt (raising
    NotApplicable where it cannot apply: the prompt stays base); `default_rate` is its share of the
    training prompts when a config's `augment:` does not name it."""

    make: AugmentFn
    default_rate: float


# The kinds a GRPO config's `augment: {KIND: RATE}` names; users add theirs with register_augmentation.
AUGMENTATIONS: Registry[Augmentation] = Registry(
    "augmentation kind", check_name=lambda name: "is the prompt left as it is" if name == "base" else None
)


def register_augmentation(name: str, *, default_rate: float = 0.0) -> Callable[[AugmentFn], AugmentFn]:
    """A decorator: `make(sample, seed, template) -> Prompt` becomes the augmentation kind `name`,
    drawn for a training prompt with the rate a config gives it (`default_rate` where it gives none).
    A name already taken is a ValueError."""
    if not 0 <= default_rate <= 1:
        raise ValueError(f"default_rate of augmentation kind {name!r} must be in [0, 1], got {default_rate}")
    AUGMENTATIONS.check_free(name)

    def add(make: AugmentFn) -> AugmentFn:
        AUGMENTATIONS.add(name, Augmentation(make, default_rate), origin=make)
        return make

    return add


def _perturbation(variant: str) -> AugmentFn:
    def make(sample: Sample, seed: int, template: Template) -> Prompt:
        return perturb(sample, variant, seed, template)

    make.__qualname__ = f"perturbation {variant}"
    return make


# The paper's: evaluation's own perturbations, 10% each (so training and evaluation cannot drift
# apart in wording).
AUGMENT_VARIANTS = ("correct_think", "wrong_think", "correct_caption", "wrong_caption")
for _variant in AUGMENT_VARIANTS:
    register_augmentation(_variant, default_rate=0.1)(_perturbation(_variant))
DEFAULT_RATES: dict[str, float] = dict.fromkeys(AUGMENT_VARIANTS, 0.1)


def default_rates() -> dict[str, float]:
    """The registered augmentation kinds with a default rate above 0, at that rate, in
    registration order (a kind registered with rate 0 is drawn only where a config names it)."""
    return {name: kind.default_rate for name, kind in AUGMENTATIONS.items() if kind.default_rate > 0}


def choose_variant(sample_id: str, seed: int, rates: Mapping[str, float] = DEFAULT_RATES) -> str:
    """The variant a training prompt takes: each named variant with its probability, else base.

    random.Random seeded with a str hashes it with SHA-512, so the draw is stable across processes.
    """
    if sum(rates.values()) > 1 + 1e-9:
        raise ValueError(f"augmentation rates sum to {sum(rates.values()):.3f} > 1")
    u = random.Random(f"augment:{seed}:{sample_id}").random()
    edge = 0.0
    for variant, p in rates.items():
        edge += p
        if u < edge:
            return variant
    return "base"


def augment(
    sample: Sample,
    seed: int,
    rates: Mapping[str, float] = DEFAULT_RATES,
    template: str = "vlmstress",
    system: str | None = None,
) -> Prompt:
    """The training prompt of `sample` (with the `system` turn): its drawn augmentation kind's (the
    shipped kinds are evaluation's perturbations); a kind that cannot apply (an open-ended sample
    has no wrong option) falls back to base."""
    kind, tpl = choose_variant(sample.sample_id, seed, rates), TEMPLATES.lookup(template)
    prompt = None
    if kind != "base":
        try:
            prompt = AUGMENTATIONS.lookup(kind).make(sample, seed, tpl)
        except NotApplicable:
            prompt = None
        else:
            if not isinstance(prompt, Prompt):
                raise TypeError(f"augmentation kind {kind!r} made a {type(prompt).__name__}, not a Prompt")
    if prompt is None:
        prompt = perturb(sample, "base", seed, tpl)
    return with_system(prompt, system)


def prompt_messages(prompt: Prompt) -> list[dict[str, str]]:
    """The prompt as TRL's conversational `prompt` column: string contents, the prefill (if any) as
    a final assistant message. TRL inserts one image placeholder per image of the `images` column
    before the first user message's text (`prepare_multimodal_messages`)."""
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    messages.append({"role": "user", "content": prompt.user})
    if prompt.prefill:
        messages.append({"role": "assistant", "content": prompt.prefill})
    return messages


def sample_images(sample: Sample) -> list[Any]:
    """Every image of a sample: `meta["images"]` for multi-image items (SAT's motion questions),
    else `Sample.images` (a multi-image evaluation file trains the same way; none for text only)."""
    images = sample.meta.get("images") if sample.meta else None
    if images:
        return list(images)
    return list(sample.images)


def training_row(sample: Sample, prompt: Prompt) -> dict[str, Any]:
    """One row of the GRPO dataset; every column but prompt/images reaches the reward functions."""
    return {
        "prompt": prompt_messages(prompt),
        "images": [_image_value(im) for im in sample_images(sample)],
        "sample_id": sample.sample_id,
        "variant": prompt.variant,
        "target": prompt.target,
        "misleading": prompt.misleading,
        "options": list(prompt.options),
        "question": sample.question,
    }


def _image_value(ref: Any) -> Any:
    # datasets' Image feature takes a PIL image, a path or {"bytes", "path"}; raw bytes get wrapped.
    if isinstance(ref, bytes | bytearray | memoryview):
        return {"bytes": bytes(ref), "path": None}
    return ref


def build_dataset(
    samples: Sequence[Sample],
    seed: int,
    rates: Mapping[str, float] = DEFAULT_RATES,
    template: str = "vlmstress",
    system: str | None = None,
):
    """A `datasets.Dataset` of augmented training rows, images kept encoded (PNG / source bytes)."""
    import datasets

    features = datasets.Features(
        {
            "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
            "images": datasets.List(datasets.Image()),
            "sample_id": datasets.Value("string"),
            "variant": datasets.Value("string"),
            "target": datasets.Value("string"),
            "misleading": datasets.Value("string"),
            "options": datasets.List(datasets.Value("string")),
            "question": datasets.Value("string"),
        }
    )
    rows = [training_row(s, augment(s, seed, rates, template, system)) for s in samples]
    return datasets.Dataset.from_list(rows, features=features)


# ---------------------------------------------------------------------------------------------------
# The prefill-aware chat template

_PREFILL_HEAD = (
    "{%- set _vs_last = messages[-1] if messages else none -%}"
    "{%- set _vs_prefill = add_generation_prompt is defined and add_generation_prompt"
    " and _vs_last is not none and _vs_last['role'] == 'assistant' -%}"
    "{%- if _vs_prefill -%}"
    "{%- set add_generation_prompt = false -%}"
    "{%- if _vs_last['content'] is string -%}{%- set _vs_text = _vs_last['content'] -%}"
    "{%- else -%}{%- set _vs_text = (_vs_last['content'] | selectattr('type', 'equalto', 'text')"
    " | list | last)['text'] -%}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- set _vs_rendered -%}"
)
_PREFILL_TAIL = (
    "{%- endset -%}"
    "{%- if _vs_prefill -%}"
    "{%- set _vs_at = _vs_rendered.rfind(_vs_text) -%}"
    "{%- if _vs_at < 0 -%}{{ raise_exception('the chat template dropped the assistant prefill') }}"
    "{%- endif -%}"
    "{{ _vs_rendered[:_vs_at + _vs_text | length] }}"
    "{%- else -%}{{ _vs_rendered }}{%- endif -%}"
)
PREFILL_MARK = "{%- set _vs_last"


def prefill_chat_template(template: str) -> str:
    """`template`, made to continue a final assistant message when asked for a generation prompt.

    The original template renders unchanged (captured with a block `set`), with
    add_generation_prompt switched off when the conversation ends in an assistant message; the
    output is then cut right after that message's text, as transformers' continue_final_message
    does. Any other call renders exactly as before. Idempotent.
    """
    if template.startswith(PREFILL_MARK):
        return template
    return _PREFILL_HEAD + template + _PREFILL_TAIL


def install_prefill_template(processor: Any) -> Any:
    """Wrap the chat template of a processor (and of its tokenizer) in place; returns it."""
    for holder in (processor, getattr(processor, "tokenizer", None)):
        if holder is not None and isinstance(getattr(holder, "chat_template", None), str):
            holder.chat_template = prefill_chat_template(holder.chat_template)
    return processor

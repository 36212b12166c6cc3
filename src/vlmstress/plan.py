"""`vlmstress eval --dry-run`: what a run would cost before it is paid for.

Counts requests (samples x variants, plus one per LLM judge and answered prompt) and estimates
tokens. The estimate needs no model weights: text at ~4 characters a token (the usual rule of thumb
for English BPE vocabularies) and a number of tokens per image (every image of a multi-image
sample): `--image-tokens N`, or else what the model's own image processor makes of the samples'
images when it is on this machine (`image_tokens_from_processor`), or else a fixed 1,200 (a guess,
said as such in the plan); generated tokens are counted at the --max-new-tokens
ceiling, so the cost is an upper bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from vlmstress.data.schema import Sample
from vlmstress.perturb import TEMPLATES, NotApplicable, perturb

CHARS_PER_TOKEN = 4.0
DEFAULT_IMAGE_TOKENS = 1200
# Images the processor estimate looks at: their mean stands for all (sizes repeat within a benchmark).
IMAGE_SAMPLE = 32


@dataclass(frozen=True)
class Plan:
    samples: int
    variants: int
    model_requests: int
    judge_requests: int
    prompt_tokens: int
    max_generated_tokens: int
    cost: float | None

    def to_json(self) -> dict:
        return asdict(self)


def plan_run(
    samples: Sequence[Sample],
    variants: Sequence[str],
    *,
    seed: int,
    template: str,
    max_new_tokens: int,
    llm_judges: int,
    image_tokens: int = DEFAULT_IMAGE_TOKENS,
    price_in: float | None = None,
    price_out: float | None = None,
    system: str | None = None,
) -> Plan:
    """`price_in` / `price_out` are per million prompt / generated tokens (API price lists' unit);
    `system`, the system prompt every request carries (a long one is a large share of a short
    prompt's tokens)."""
    requests, text_tokens, image_total = 0, 0.0, 0
    for variant in variants:
        for s in samples:
            if s.error:
                continue
            try:
                p = perturb(s, variant, seed, TEMPLATES[template])
            except NotApplicable:
                continue
            requests += 1
            text_tokens += (len(p.user) + len(p.prefill) + len(system or "")) / CHARS_PER_TOKEN
            image_total += image_tokens * len(p.images)  # a multi-image sample pays for each
    judge_requests = requests * llm_judges
    # a judge reads the question and options (about the text prompt, no image) and the completion,
    # and answers with one short JSON line (~64 tokens)
    judge_prompt = llm_judges * (text_tokens + requests * max_new_tokens)
    generated = requests * max_new_tokens + judge_requests * 64
    total_prompt = int(text_tokens + image_total + judge_prompt)
    cost = None
    if price_in is not None and price_out is not None:
        cost = round((total_prompt * price_in + generated * price_out) / 1e6, 4)
    return Plan(len(samples), len(variants), requests, judge_requests, total_prompt, generated, cost)


def _processor_path(model: str) -> str | None:
    """Where a model SPEC's processor would load from, for the SPECs whose processor is local or a
    hub id (tiny, hf:, vllm:); None for servers and replays, whose tokens the plan cannot see."""
    from vlmstress.models.tiny import ASSET_DIR

    kind, _, rest = model.partition(":")
    if kind == "tiny":
        return rest or str(ASSET_DIR)
    if kind in ("hf", "vllm") and rest:
        return rest
    return None


def image_tokens_from_processor(model: str, samples: Sequence[Sample]) -> tuple[int | None, str]:
    """(mean tokens per image, where the figure comes from) as the model's own image processor counts
    them on up to IMAGE_SAMPLE of the samples' images: Qwen2-VL-style processors report each image's
    patch grid, merged `merge_size`^2 patches to a token. (None, why) when the processor is not on
    this machine (nothing is downloaded for a plan) or does not say."""
    path = _processor_path(model)
    if path is None:
        return None, f"{model.partition(':')[0]}: no local processor to ask"
    images = [img for s in samples if not s.error for img in s.images][:IMAGE_SAMPLE]
    if not images:
        return None, "no images"
    try:
        from vlmstress.models.hf import load_processor

        processor = load_processor(path, local_files_only=True)
        image_processor = getattr(processor, "image_processor", processor)
        grids = image_processor(images=images, return_tensors="np").get("image_grid_thw")
    except Exception as exc:  # noqa: BLE001 - any failure leaves the default, said as such
        return None, f"its processor could not be loaded here ({type(exc).__name__})"
    if grids is None:
        return None, "its processor does not report image grids"
    merge = getattr(image_processor, "merge_size", 2)
    tokens = [int(g.prod()) // (merge * merge) for g in grids]
    return round(sum(tokens) / len(tokens)), f"{type(image_processor).__name__} on {len(tokens)} images"

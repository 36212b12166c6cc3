"""`vlmstress eval --dry-run`: what a run would cost before it is paid for.

Counts requests (samples x variants, plus one per LLM judge and answered prompt) and estimates
tokens. The estimate needs no model: text at ~4 characters a token (the usual rule of thumb for
English BPE vocabularies) and a fixed number of tokens per image (every image of a multi-image
sample), both settable; generated tokens are counted at the --max-new-tokens ceiling, so the cost
is an upper bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from vlmstress.data.schema import Sample
from vlmstress.perturb import TEMPLATES, NotApplicable, perturb

CHARS_PER_TOKEN = 4.0


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
    image_tokens: int = 1200,
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

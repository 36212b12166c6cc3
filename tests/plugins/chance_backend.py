"""A user backend, for tests/test_registries.py: a chance-level model, `--model chance` (or
`chance:SALT`). It answers an option letter drawn uniformly from (salt, sample id, variant) and
reports the uniform distribution over the letters, so its accuracy is chance and its entropy ln k."""

import random

from vlmstress import register_backend
from vlmstress.models.base import Generation

GUESS = "I cannot tell from the image, so I guess."


@register_backend("chance")
class ChanceModel:
    """The VLM protocol (models/base.py): a `name`, and `generate` giving one Generation a prompt."""

    def __init__(self, salt: str = "0", *, think: str = GUESS):
        self.name, self.salt, self.think = f"chance:{salt}", salt, think

    def generate(self, prompts, *, max_new_tokens):
        out = []
        for p in prompts:
            letters = p.option_letters
            pick = random.Random(f"{self.salt}:{p.sample_id}:{p.variant}").choice(letters)
            # The completion continues the prefill: after a closed think only the answer, inside an
            # open one the rest of the think.
            if "</think>" in p.prefill:
                text = f"<answer>{pick}</answer>"
            elif "<think>" in p.prefill:
                text = f" {self.think}</think><answer>{pick}</answer>"
            else:
                text = f"<think>{self.think}</think><answer>{pick}</answer>"
            probs = dict.fromkeys(letters, 1 / len(letters))
            out.append(Generation(text=text, letter_probs=probs, score_source="generation", n_tokens=8))
        return out

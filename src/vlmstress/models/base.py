"""The model protocol: every backend turns Prompts into Generations, nothing more.

Backends know nothing about datasets, variants or metrics (the lm-evaluation-harness lesson).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from vlmstress.data.schema import Prompt

ScoreSource = Literal["generation", "forced"]


@dataclass
class Generation:
    """One completion. `text` is what the model wrote after the prefill (the prefill excluded).

    `letter_probs` is the distribution over the prompt's option letters at the first answer-letter
    token (renormalised over them), `score_source` says whether it came from the generation pass or
    from forced scoring after appending `<answer>`; both None when the backend cannot read logits.
    `error` is set when this one prompt failed; the others in the batch still count. `meta` holds
    what a backend wants recorded about how it answered (e.g. the openai backend's prefill mode).
    """

    text: str
    letter_probs: dict[str, float] | None = None
    score_source: ScoreSource | None = None
    n_tokens: int = 0
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class VLM(Protocol):
    name: str

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int) -> list[Generation]:
        """Greedy completions, one per prompt, in order."""
        ...


def chat_messages(prompt: Prompt, *, with_prefill: bool = True) -> list[dict[str, Any]]:
    """The prompt as chat messages in the transformers / OpenAI content-part form.

    The image is a content part placed before the text, as Qwen2.5-VL's own examples do; a
    multi-image prompt has one part per image, in order (Qwen2.5-VL's multi-image examples), so the
    backend fills them with `prompt.images` in that order. The prefill, when wanted, is a final
    assistant message for the backend to continue.
    """
    messages: list[dict[str, Any]] = []
    if prompt.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": prompt.system}]})
    content: list[dict[str, Any]] = [{"type": "image"} for _ in prompt.images]
    content.append({"type": "text", "text": prompt.user})
    messages.append({"role": "user", "content": content})
    if with_prefill and prompt.prefill:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": prompt.prefill}]})
    return messages

"""`hf:` and `tiny`: any chat VLM through transformers, batched greedy generation with left padding.

The letter distribution is read from the generation pass itself: the logits at the first option
letter after `<answer>`, softmaxed over the prompt's option letters only. A completion with no such
letter is scored *forced*: one extra forward pass over prompt + completion + `<answer>`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from vlmstress.models.base import Generation, chat_messages
from vlmstress.perturb import Prompt

ANSWER_TAG = "<answer>"


def _load_image(ref):
    from vlmstress.data.images import load_image

    return load_image(ref)


def load_processor(path_or_id: str):
    """The checkpoint's own processor; without torchvision (whose video processor Qwen-VL processors
    insist on) fall back to the tokenizer plus the slow PIL image processor."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path_or_id)
    except (ImportError, ValueError, TypeError, AttributeError, OSError):
        from vlmstress.models.tiny import load_processor as pil_processor

        return pil_processor(path_or_id)


@dataclass
class HFModel:
    model: object
    processor: object
    name: str
    device: str = "cpu"
    _letter_ids: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_pretrained(cls, path_or_id: str, *, name: str | None = None, dtype: str = "auto",
                        device: str | None = None, **_: object) -> HFModel:
        from transformers import AutoModelForImageTextToText

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModelForImageTextToText.from_pretrained(path_or_id, dtype=dtype).to(device).eval()
        processor = load_processor(path_or_id)
        processor.tokenizer.padding_side = "left"
        return cls(model=model, processor=processor, name=name or f"hf:{path_or_id}", device=device)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def prompt_text(self, prompt: Prompt) -> str:
        # The prefill is appended to the rendered generation prompt: the same string as
        # continue_final_message gives, without depending on how a template strips the last turn.
        messages = chat_messages(prompt, with_prefill=False)
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + prompt.prefill

    def _encode(self, texts: list[str], images: list) -> dict:
        kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
        if any(im is not None for im in images):
            kwargs["images"] = [im for im in images if im is not None]
        return {k: v.to(self.device) for k, v in self.processor(**kwargs).items()}

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int) -> list[Generation]:
        results: list[Generation | None] = [None] * len(prompts)
        texts, images, rows = [], [], []
        for i, p in enumerate(prompts):
            try:
                images.append(_load_image(p.image) if p.image is not None else None)
            except ValueError as e:
                results[i] = Generation(text="", error=f"image: {e}")
                continue
            texts.append(self.prompt_text(p))
            rows.append(i)
        if rows:
            for i, gen in zip(rows, self._generate_batch([prompts[i] for i in rows], texts, images, max_new_tokens)):
                results[i] = gen
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def _generate_batch(self, prompts, texts, images, max_new_tokens) -> list[Generation]:
        enc = self._encode(texts, images)
        out = self.model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
            return_dict_in_generate=True, pad_token_id=self.tokenizer.pad_token_id,
        )
        new = out.sequences[:, enc["input_ids"].shape[1]:]
        eos = self.tokenizer.eos_token_id
        gens, forced = [], []
        for b, p in enumerate(prompts):
            ids = new[b].tolist()
            if eos in ids:
                ids = ids[: ids.index(eos)]
            ids = [t for t in ids if t != self.tokenizer.pad_token_id]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            probs = None
            pos = self._answer_letter_position(ids, p.option_letters) if p.options else None
            if pos is not None:
                step, letter_ids = pos
                probs = _renormalise(out.logits[step][b], letter_ids)
            gens.append(Generation(text=text, letter_probs=probs, score_source="generation" if probs else None,
                                   n_tokens=len(ids)))
            if probs is None and p.options:
                forced.append(b)
        if forced:
            scored = self._forced_scores([texts[b] + gens[b].text for b in forced],
                                         [images[b] for b in forced], [prompts[b] for b in forced])
            for b, probs in zip(forced, scored):
                gens[b].letter_probs, gens[b].score_source = probs, "forced"
        return gens

    def _answer_letter_position(self, ids: list[int], option_letters: list[str]):
        """(step, {letter: token id}) of the first option letter after `<answer>` in the completion."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        start = text.find(ANSWER_TAG)
        if start < 0:
            return None
        start += len(ANSWER_TAG)
        # walk the tokens to the one that carries the first non-space character after the tag
        for j in range(len(ids)):
            if len(self.tokenizer.decode(ids[: j + 1], skip_special_tokens=True)) <= start:
                continue
            piece = self.tokenizer.decode([ids[j]], skip_special_tokens=True)
            core = piece.strip().lstrip("(")
            if not core:
                continue  # whitespace or "(" before the letter
            if core in option_letters:
                letter_ids = self._letter_family(piece, core, option_letters)
                return (j, letter_ids) if letter_ids else None
            return None
        return None

    def _letter_family(self, piece: str, letter: str, option_letters: list[str]) -> dict[str, int] | None:
        """Token ids of every option letter in the same surface form as `piece` (" B", "B", "(B")."""
        key = (piece.replace(letter, "{}"), tuple(option_letters))
        if key not in self._letter_ids:
            family = {}
            for ltr in option_letters:
                ids = self.tokenizer.encode(key[0].format(ltr), add_special_tokens=False)
                if len(ids) != 1:
                    family = None
                    break
                family[ltr] = ids[0]
            self._letter_ids[key] = family
        return self._letter_ids[key]

    @torch.no_grad()
    def _forced_scores(self, texts, images, prompts) -> list[dict[str, float] | None]:
        enc = self._encode([t + ANSWER_TAG for t in texts], images)
        logits = self.model(**enc).logits[:, -1, :]
        out = []
        for b, p in enumerate(prompts):
            family = self._letter_family("{}".format("A"), "A", p.option_letters)
            out.append(_renormalise(logits[b], family) if family else None)
        return out


def _renormalise(logits: torch.Tensor, letter_ids: dict[str, int]) -> dict[str, float]:
    sub = torch.stack([logits[i] for i in letter_ids.values()]).float()
    probs = torch.softmax(sub, dim=0).tolist()
    return {ltr: p for ltr, p in zip(letter_ids, probs) if not math.isnan(p)}

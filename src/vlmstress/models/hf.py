"""`hf:` and `tiny`: any chat VLM through transformers, batched greedy generation with left padding.

The letter distribution is read from the generation pass itself: the raw logits at the first option
letter after `<answer>`, softmaxed over the prompt's option letters only. Only the logits of
letter-shaped tokens are kept at each step (the full vocabulary at every step of a long completion
is gigabytes on a 7B model). A completion with no such letter is scored *forced*: one extra
forward pass over prompt + completion + `<answer>`.

Letters are found by token shape, not by one tokenizer's habits: after `<answer>` a letter may be
its own token ("B"), carry a space or bracket (" B", "(B", "▁B"), or absorb the tag's last character
(">B", as Qwen's pre-tokenizer makes it). The competing letters are the same token with the letter
swapped ("(A", "(B", "(C"), so the distribution compares like with like.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from vlmstress.errors import UsageError
from vlmstress.models.base import Generation, chat_messages
from vlmstress.models.image_cache import DEFAULT_BUDGET, ImageCache, caching_processor
from vlmstress.perturb import Prompt

log = logging.getLogger(__name__)

ANSWER_TAG = "<answer>"
DTYPES: dict[str, Any] = {
    "auto": "auto",
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# Characters a model may put between `<answer>` and the letter: "<answer> B", "<answer>(B)", "<answer>**B**".
_BEFORE_LETTER = " \t\r\n([*"
# A vocabulary entry whose only ASCII letter is one capital: "B", "ĠB", "▁B", "(B", ">B", "B)". Byte-level
# and SentencePiece space markers are not ASCII, so they pass; "<0x41>"-style byte tokens do not.
_LETTER_SHAPED = re.compile(r"[^A-Za-z]*([A-Z])[^A-Za-z]*")


def _row_images(row: Any) -> list:
    if row is None:
        return []
    return list(row) if isinstance(row, list | tuple) else [row]


def load_processor(path_or_id: str, **kwargs: Any):
    """The checkpoint's own processor.

    Processors of video-capable models (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, ...) also build a video
    processor, which needs torchvision (not a dependency of this project) and a video config (which
    processors saved without one lack). When that fails, the same processor class is built without its
    video processor: images go through the image processor AutoImageProcessor picks (the slow PIL one
    when torchvision is absent), and video input, which vlmstress never sends, is unavailable.
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path_or_id, **kwargs)
    except (ImportError, OSError, ValueError) as exc:
        cls = _processor_class(path_or_id)
        if cls is None:
            raise
        try:
            return _without_video(cls).from_pretrained(path_or_id, **kwargs)
        except Exception:
            raise exc from None  # the stock loader's error says what is missing


def _processor_class(path_or_id: str) -> type | None:
    """The processor class AutoProcessor resolves: the one the checkpoint's processor or preprocessor
    config names, else its model type's."""
    from transformers import AutoConfig
    from transformers.image_processing_utils import ImageProcessingMixin
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING, processor_class_from_name
    from transformers.processing_utils import ProcessorMixin

    for read in (ProcessorMixin.get_processor_dict, ImageProcessingMixin.get_image_processor_dict):
        try:
            name = read(path_or_id)[0].get("processor_class")
        except (OSError, ValueError):  # no such file in the checkpoint
            continue
        if name:
            return processor_class_from_name(name)
    return PROCESSOR_MAPPING.get(type(AutoConfig.from_pretrained(path_or_id)), None)


def _without_video(cls: type) -> type:
    """`cls` with no video processor among its parts: neither loaded nor type-checked, and None when read."""

    class WithoutVideo(cls):  # type: ignore[misc, valid-type]
        video_processor = None

        @classmethod
        def get_attributes(klass) -> list[str]:
            return [a for a in super().get_attributes() if a != "video_processor"]

    WithoutVideo.__name__ = WithoutVideo.__qualname__ = cls.__name__
    return WithoutVideo


def forced_answer_prefix(tokenizer: Any, letter: str) -> tuple[str, int] | None:
    """How to ask for the answer letter after a completion: (text to append, id of the token that
    then writes `letter`), or None when the tokenizer does not end `<answer>X` with one letter token.

    Usually that is all of `<answer>` and the bare letter. But a tokenizer may merge the tag's end
    into the letter (Qwen writes `<answer>B` as "<answer" + ">B"); appending the whole tag would leave
    the model at a token boundary it never saw, so only "<answer" is appended and ">B" is the token.
    """
    try:
        ids = tokenizer.encode(ANSWER_TAG + letter, add_special_tokens=False)
        piece = tokenizer.decode(ids[-1:], skip_special_tokens=True)
    except Exception:  # tokenizers without the HF interface (vLLM's Mistral tokenizer): no plan
        return None
    if not ids or not piece.endswith(letter) or not ANSWER_TAG.endswith(absorbed := piece[:-1]):
        return None
    return ANSWER_TAG[: len(ANSWER_TAG) - len(absorbed)], ids[-1]


def _torch_placement(device: str | None) -> tuple[str | None, str | None]:
    """(device to move the model to, device_map for from_pretrained) for the `device` option."""
    if device is None:
        return ("cuda" if torch.cuda.is_available() else "cpu"), None
    if device == "auto":  # accelerate spreads the layers over every visible GPU (and CPU if needed)
        return None, "auto"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UsageError(f"hf device must be cpu, cuda, cuda:N or auto, not {device!r}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"hf device {device!r}: this torch sees no CUDA device")
    return device, None


@dataclass
class HFModel:
    """A transformers image-text-to-text model and its processor as a VLM.

    Built by `from_pretrained`, or directly around a model already in memory (the training loop's
    policy): inputs go to wherever the model's parameters are, so `device` is informational.
    """

    model: Any
    processor: Any
    name: str
    device: str = "cpu"
    # Longest prompt (in tokens) sent to the model; None: the model config's max_position_embeddings.
    max_prompt_tokens: int | None = None
    # Caches: letter-token families by (token id, letter, option letters); forced-scoring plans by letters.
    _families: dict[tuple, dict[str, int] | None] = field(default_factory=dict, repr=False)
    _forced_plans: dict[tuple, tuple[str, dict[str, int]] | None] = field(default_factory=dict, repr=False)
    # Bytes of decoded and processed images kept for a sample's other prompts (image_cache.py); 0: none.
    image_cache_bytes: int = DEFAULT_BUDGET
    # 0: greedy decoding. Above 0: completions sampled at this temperature (no top-k / top-p cut, as a
    # GRPO policy samples), seeded by `sample_seed` and the batch's prompts, so a rerun with the same
    # batches samples the same completions. Letter probabilities stay the model's own (temperature 1).
    temperature: float = 0.0
    sample_seed: int = 0

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str,
        *,
        name: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        attn_implementation: str | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        max_prompt_tokens: int | None = None,
        temperature: float = 0.0,
        sample_seed: int = 0,
    ) -> HFModel:
        """Load a checkpoint folder or hub id.

        dtype: auto (the checkpoint's own), float32, bfloat16 or float16. device: cpu, cuda, cuda:N, or
        auto (layers spread over the visible GPUs); default cuda when available. processor_kwargs go to
        the processor (e.g. {"max_pixels": 1003520} to bound Qwen-VL's image tokens).
        max_prompt_tokens: a longer prompt is that prompt's error, never sent to the model (default:
        the model's context, max_position_embeddings). temperature: 0 decodes greedily; above 0 the
        completions are sampled (seeded by sample_seed and each batch's prompts).
        """
        from transformers import AutoModelForImageTextToText

        if dtype not in DTYPES:
            raise UsageError(f"hf dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        if max_prompt_tokens is not None and (
            isinstance(max_prompt_tokens, bool)
            or not isinstance(max_prompt_tokens, int)
            or max_prompt_tokens < 1
        ):
            raise UsageError(f"hf max_prompt_tokens must be a whole number >= 1, not {max_prompt_tokens!r}")
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not math.isfinite(temperature)
            or temperature < 0
        ):
            raise UsageError(f"hf temperature must be a number >= 0 (0: greedy), not {temperature!r}")
        if isinstance(sample_seed, bool) or not isinstance(sample_seed, int):
            raise UsageError(f"hf sample_seed must be a whole number, not {sample_seed!r}")
        target, device_map = _torch_placement(device)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = AutoModelForImageTextToText.from_pretrained(
            path_or_id, dtype=DTYPES[dtype], device_map=device_map, **extra
        )
        if target is not None:
            model = model.to(target)
        processor = load_processor(path_or_id, **(processor_kwargs or {}))
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:  # batching needs a pad token; it is masked out, so eos serves
            tokenizer.pad_token = tokenizer.eos_token
        return cls(
            model=model.eval(),
            processor=processor,
            name=name or f"hf:{path_or_id}",
            device=str(model.device),
            max_prompt_tokens=max_prompt_tokens,
            temperature=float(temperature),
            sample_seed=sample_seed,
        )

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def prompt_text(self, prompt: Prompt) -> str:
        # The prefill is appended to the rendered generation prompt: the same string as
        # continue_final_message gives, without depending on how a template strips the last turn.
        messages = chat_messages(prompt, with_prefill=False)
        rendered = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return rendered + prompt.prefill

    def _encode(self, texts: list[str], images: list) -> Any:
        """`images[b]` is prompt b's decoded images in order (a list; one image or None is read as
        the one-image and text-only rows they were before multi-image prompts). The processor takes
        them as one flat list and hands them out to the texts' image placeholders in order."""
        kwargs: dict[str, Any] = {
            "text": texts,
            "return_tensors": "pt",
            "padding": True,
            "padding_side": "left",
        }
        flat = [im for row in images for im in _row_images(row)]
        if flat:
            kwargs["images"] = flat
        # Pixel values follow the model's dtype (a bfloat16 model gets bfloat16 pixels); ids stay integers.
        return self._caching_processor(**kwargs).to(device=self.model.device, dtype=self.model.dtype)

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int) -> list[Generation]:
        results: list[Generation | None] = [None] * len(prompts)
        rows, texts, images = [], [], []
        for i, p in enumerate(prompts):
            text = self.prompt_text(p)
            if self._beyond_length_bound(text):  # refused before its images are even decoded
                results[i] = Generation(text="", error=self._too_long(text))
                continue
            try:
                images.append(self._image_cache.images(p.images) if p.image is not None else [])
            except ValueError as e:
                results[i] = Generation(text="", error=f"image: {e}")
                continue
            texts.append(text)
            rows.append(i)
        gens = self._generate_isolating([prompts[i] for i in rows], texts, images, max_new_tokens)
        for i, gen in zip(rows, gens, strict=True):
            results[i] = gen
        return results  # type: ignore[return-value]

    @cached_property
    def _image_cache(self) -> ImageCache:
        return ImageCache(self.image_cache_bytes)

    @cached_property
    def _caching_processor(self) -> Any:
        """The processor, its image processor answering from `_image_cache` (`processor` untouched)."""
        return caching_processor(self.processor, self._image_cache)

    @cached_property
    def context_limit(self) -> int | None:
        """The most prompt tokens this model is sent: max_prompt_tokens, else the context the model
        was built for (max_position_embeddings of its text config), else no limit."""
        if self.max_prompt_tokens is not None:
            return self.max_prompt_tokens
        config = getattr(self.model, "config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        limit = getattr(text_config, "max_position_embeddings", None)
        return limit if isinstance(limit, int) and limit > 0 else None

    @cached_property
    def _longest_token(self) -> int:
        return max((len(t) for t in self._vocab), default=1) or 1

    def _beyond_length_bound(self, text: str) -> bool:
        """Whether `text` is too long by its length alone: no token writes more characters than the
        longest vocabulary entry, so a text longer than limit x that cannot fit (a 1 MB question is
        refused without tokenizing it)."""
        limit = self.context_limit
        return limit is not None and len(text) > limit * self._longest_token

    def _too_long(self, text: str, encoded: int | None = None) -> str | None:
        """The error of a prompt longer than `context_limit`, or None. Checked before any forward pass:
        a batch pads to its longest prompt, so one huge question would make the whole batch ask for
        its attention matrices (hundreds of GB) instead of failing alone. The count is of the text
        (an image placeholder counts once), a lower bound of what the model sees.

        `encoded`: the prompt's length as the processor tokenised it (placeholders expanded), which
        is at least the text's count, so a prompt within the limit there needs no count of its own.
        """
        limit = self.context_limit
        if limit is None:
            return None
        if self._beyond_length_bound(text):
            count = f"more than {limit}"
        elif encoded is not None and encoded <= limit:
            return None
        else:
            n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if n <= limit:
                return None
            count = str(n)
        return (
            f"prompt too long: {count} tokens, the model takes at most {limit} "
            "(max_position_embeddings, or --model-opt max_prompt_tokens=N)"
        )

    def _generate_isolating(self, prompts, texts, images, max_new_tokens) -> list[Generation]:
        """A batch that fails is retried one prompt at a time, so a prompt that cannot run (too long,
        out of memory, a processor error) fails alone instead of sinking the batch."""
        if not prompts:
            return []
        try:
            return self._generate_batch(prompts, texts, images, max_new_tokens)
        except Exception as exc:  # the contract: one prompt never sinks the batch
            if len(prompts) == 1:
                return [Generation(text="", error=f"{type(exc).__name__}: {exc}")]
            log.warning(
                "batch of %d failed (%s: %s); retrying one by one", len(prompts), type(exc).__name__, exc
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return [
                gen
                for one in zip(prompts, texts, images, strict=True)
                for gen in self._generate_isolating(*([x] for x in one), max_new_tokens)
            ]

    @torch.no_grad()
    def _generate_batch(self, prompts, texts, images, max_new_tokens) -> list[Generation]:
        enc = self._encode(texts, images)
        # The prompts' lengths are read from the batch's own encoding (no second tokenizer pass);
        # a prompt too long fails alone and the others are encoded again without it.
        lengths = enc["attention_mask"].sum(-1).tolist() if "attention_mask" in enc else [None] * len(texts)
        too_long = [self._too_long(t, encoded=n) for t, n in zip(texts, lengths, strict=True)]
        if any(too_long):
            keep = [b for b, error in enumerate(too_long) if error is None]
            rest = iter(
                self._generate_batch(
                    *([xs[b] for b in keep] for xs in (prompts, texts, images)), max_new_tokens
                )
                if keep
                else []
            )
            return [Generation(text="", error=error) if error else next(rest) for error in too_long]
        columns = self._letter_columns({ltr for p in prompts for ltr in p.option_letters})
        decoding: dict[str, Any] = {"do_sample": False}
        if self.temperature > 0:
            decoding = {"do_sample": True, "temperature": self.temperature, "top_k": 0, "top_p": 1.0}
        with self._sampling_rng(prompts), _StepLogits(self.model, list(columns)) as steps:
            out = self.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id,
                **decoding,
            )
        new = out.sequences[:, enc["input_ids"].shape[1] :].tolist()
        stops = self._stop_ids()
        gens, forced = [], []
        for b, p in enumerate(prompts):
            ids = new[b]
            ids = ids[: next((k for k, t in enumerate(ids) if t in stops), len(ids))]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            probs = None
            pos = self._answer_letter_position(ids, text, p) if p.options else None
            if pos is not None:
                step, family = pos
                probs = _renormalise(steps.at(step)[b], {ltr: columns[t] for ltr, t in family.items()})
            n_tokens = sum(t != self.tokenizer.pad_token_id for t in ids)
            source = "generation" if probs else None
            gens.append(Generation(text=text, letter_probs=probs, score_source=source, n_tokens=n_tokens))
            if probs is None and p.options:
                forced.append(b)
        if forced:
            scored = self._forced_scores(
                [texts[b] + gens[b].text for b in forced],
                [images[b] for b in forced],
                [prompts[b] for b in forced],
            )
            for b, probs in zip(forced, scored, strict=True):
                if probs is not None:
                    gens[b].letter_probs, gens[b].score_source = probs, "forced"
        return gens

    @contextmanager
    def _sampling_rng(self, prompts: Sequence[Prompt]) -> Iterator[None]:
        """When sampling: torch's global generator (which `generate` draws from) seeded from the
        batch, and put back after, so sampled evaluation neither depends on nor disturbs what ran
        before (a trainer's stream). Greedy decoding draws nothing and leaves it alone."""
        if self.temperature <= 0:
            yield
            return
        with torch.random.fork_rng(devices=[] if self.model.device.type != "cuda" else None):
            torch.manual_seed(self._batch_seed(prompts))
            yield

    def _batch_seed(self, prompts: Sequence[Prompt]) -> int:
        """A seed from sample_seed and which prompts the batch holds (sha256: stable across runs)."""
        key = "\n".join([str(self.sample_seed), *(f"{p.sample_id}\t{p.variant}" for p in prompts)])
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")

    def _stop_ids(self) -> set[int]:
        """Tokens that end a completion: the tokenizer's eos and every eos the generation config lists."""
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = set(eos) if isinstance(eos, list | tuple) else {eos}
        return {i for i in ids | {self.tokenizer.eos_token_id} if i is not None}

    def _answer_letter_position(self, ids: list[int], text: str, prompt: Prompt):
        """(step, {letter: token id}) of the first option letter after `<answer>`, or None.

        The tag may sit in the prefill (a prompt can end in `<answer>`); the letter must be generated.
        """
        context = prompt.prefill + text
        tag = context.find(ANSWER_TAG)
        if tag < 0:
            return None
        at = tag + len(ANSWER_TAG)
        while at < len(context) and context[at] in _BEFORE_LETTER:
            at += 1
        letter = context[at : at + 1]
        if letter not in prompt.option_letters or context[at + 1 : at + 2].isalnum():
            return None  # no letter, or a word that starts with one ("Both")
        if at < len(prompt.prefill):
            return None  # the letter was given, not generated
        step = self._token_at(ids, at - len(prompt.prefill))
        family = self._letter_family(ids[step], letter, prompt.option_letters)
        return (step, family) if family else None

    def _token_at(self, ids: list[int], char: int) -> int:
        """Index of the token that writes character `char` of the decoded completion.

        The first token whose prefix decodes past `char`, found by bisection: log n prefix decodes
        instead of one per token (decoding prefixes, not single tokens, keeps multi-byte characters
        and SentencePiece spaces exactly as the full decode renders them).
        """
        lo, hi = 0, len(ids) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self.tokenizer.decode(ids[: mid + 1], skip_special_tokens=True)) > char:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _letter_family(self, token_id: int, letter: str, letters: list[str]) -> dict[str, int] | None:
        """{option letter: token id} of `token_id` with its letter swapped for each option letter, or
        None when the token is not letter-shaped or some swap is not in the vocabulary."""
        key = (token_id, letter, tuple(letters))
        if key not in self._families:
            raw = self.tokenizer.convert_ids_to_tokens(token_id)
            family = None
            if raw and _LETTER_SHAPED.fullmatch(raw) and letter in raw:
                swapped = {ltr: self._vocab.get(raw.replace(letter, ltr)) for ltr in letters}
                if None not in swapped.values():
                    family = swapped
            self._families[key] = family
        return self._families[key]

    @cached_property
    def _vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()

    @cached_property
    def _letter_shaped(self) -> list[tuple[int, str]]:
        """(token id, its capital) of every letter-shaped vocabulary entry, found once per tokenizer."""
        shaped = ((i, _LETTER_SHAPED.fullmatch(tok)) for tok, i in self._vocab.items())
        return sorted((i, m.group(1)) for i, m in shaped if m)

    def _letter_columns(self, letters: set[str]) -> dict[int, int]:
        """{token id: column} of the letter-shaped tokens of `letters`: the logits kept at each step.

        Closed under swaps among `letters`, so every family of a prompt whose option letters are
        among them has all its columns here.
        """
        kept = [i for i, capital in self._letter_shaped if capital in letters]
        return {token_id: col for col, token_id in enumerate(kept)}

    def _forced_plan(self, letters: list[str]) -> tuple[str, dict[str, int]] | None:
        """(text to append, {letter: token id}) for forced scoring, or None if the tokenizer cannot say."""
        key = tuple(letters)
        if key not in self._forced_plans:
            plan = None
            found = forced_answer_prefix(self.tokenizer, letters[0])
            if found is not None:
                family = self._letter_family(found[1], letters[0], letters)
                plan = (found[0], family) if family else None
            self._forced_plans[key] = plan
        return self._forced_plans[key]

    @torch.no_grad()
    def _forced_scores(self, texts, images, prompts) -> list[dict[str, float] | None]:
        """Next-letter distributions after each text + `<answer>`; None where the tokenizer cannot say
        which token a letter is, or where the pass fails (the completion itself still stands)."""
        plans = [self._forced_plan(p.option_letters) for p in prompts]
        rows = [b for b, plan in enumerate(plans) if plan is not None]
        out: list[dict[str, float] | None] = [None] * len(prompts)
        if not rows:
            return out
        try:
            enc = self._encode([texts[b] + plans[b][0] for b in rows], [images[b] for b in rows])  # type: ignore[index]
            # Only the last position's logits are needed; asking for all of them costs B x L x vocab.
            logits = self.model(**enc, logits_to_keep=1).logits[:, -1, :]
        except Exception as exc:  # a forced score is a bonus; losing it must not lose the completions
            log.warning("forced scoring failed (%s: %s); letter_probs left empty", type(exc).__name__, exc)
            return out
        for k, b in enumerate(rows):
            out[b] = _renormalise(logits[k], plans[b][1])  # type: ignore[index]
        return out


class _StepLogits:
    """Records, at each generation step, the output layer's raw logits for a fixed set of token ids.

    A forward hook on the output embeddings sees every step's logits before any logits processor (the
    same values `generate(output_logits=True)` returns), and keeping only the letter-shaped columns
    holds memory to steps x batch x a few thousand instead of steps x batch x vocabulary.
    """

    def __init__(self, model: Any, token_ids: list[int]) -> None:
        self.head = model.get_output_embeddings()
        self.index = torch.tensor(token_ids, dtype=torch.long)
        self.steps: list[torch.Tensor] = []

    def __enter__(self) -> _StepLogits:
        self.handle = self.head.register_forward_hook(self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def _record(self, module: Any, inputs: Any, output: torch.Tensor) -> None:
        # One call per generated token (the prompt pass included): the last position is the next token.
        if self.index.device != output.device:
            self.index = self.index.to(output.device)
        self.steps.append(output[:, -1, :].index_select(-1, self.index))

    def at(self, step: int) -> torch.Tensor:
        return self.steps[step]


def _renormalise(logits: torch.Tensor, letter_ids: dict[str, int]) -> dict[str, float]:
    sub = torch.stack([logits[i] for i in letter_ids.values()]).float()
    probs = torch.softmax(sub, dim=0).tolist()
    return {ltr: p for ltr, p in zip(letter_ids, probs, strict=True) if not math.isnan(p)}

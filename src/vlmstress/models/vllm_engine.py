"""`vllm:`: a chat VLM run in-process by vLLM's offline engine (`vllm.LLM`), for GPU-scale evaluation.

Requests go through `LLM.chat` with each image as a PIL content part (several, in order, for a
multi-image sample), so vLLM applies the model's own chat template and image processing. A prefill
is the final assistant message, continued with `continue_final_message=True,
add_generation_prompt=False` (the same request the `openai:` backend sends a `vllm serve` server).
Decoding is greedy and asks for the top-k logprobs of every generated token; the letter distribution
is read from them exactly as the `openai:` backend reads a server's.
A completion without an answer letter gets a forced score from a one-token continuation after
`<answer>`, as the `hf:` backend does.

vLLM is an optional dependency (`pip install 'vlmstress[vllm]'`): this module imports it at the top,
and the registry turns its absence into a usage error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import vllm

from vlmstress.data.schema import Prompt
from vlmstress.models.base import Generation, chat_messages
from vlmstress.models.hf import ANSWER_TAG, forced_answer_prefix
from vlmstress.models.openai_api import letter_probs_from_logprobs

log = logging.getLogger(__name__)

# vLLM refuses more logprobs per token than its engine's max_logprobs, which defaults to 20.
VLLM_DEFAULT_MAX_LOGPROBS = 20


class VLLMModel:
    """A model served in-process by vLLM. `engine_kwargs` go to `vllm.LLM` as they are (e.g.
    enforce_eager, mm_processor_kwargs={"max_pixels": ...}, max_num_seqs, seed)."""

    def __init__(
        self,
        model_id: str,
        *,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "auto",
        top_logprobs: int = 20,
        limit_mm_per_prompt: dict[str, Any] | None = None,
        max_images: int | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if top_logprobs < 0:
            raise ValueError("top_logprobs must be >= 0")
        if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int)):
            raise ValueError(f"max_images must be a whole number, not {max_images!r}")
        if limit_mm_per_prompt is None:
            # A one-image run keeps vLLM's smallest memory profile; a multi-image run says how many
            # images its largest sample has (max_images), or sets limit_mm_per_prompt itself.
            limit_mm_per_prompt = {"image": max_images if max_images is not None else 1}
        self.max_images = int(limit_mm_per_prompt.get("image", 1))
        self.name = f"vllm:{model_id}"
        self.top_logprobs = top_logprobs
        if max_model_len is not None:
            engine_kwargs["max_model_len"] = max_model_len
        if top_logprobs > VLLM_DEFAULT_MAX_LOGPROBS:
            engine_kwargs.setdefault("max_logprobs", top_logprobs)
        self.llm = vllm.LLM(
            model=model_id,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            limit_mm_per_prompt=limit_mm_per_prompt,
            **engine_kwargs,
        )
        # Greedy, but with the checkpoint's repetition penalty if its generation config sets one: what
        # transformers' generate(do_sample=False) and `vllm serve` (generation-config auto) also apply.
        defaults = self.llm.get_default_sampling_params()
        self.repetition_penalty = float(getattr(defaults, "repetition_penalty", None) or 1.0)

    def __repr__(self) -> str:
        return f"VLLMModel({self.name!r})"

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int) -> list[Generation]:
        results: list[Generation | None] = [None] * len(prompts)
        requests: list[tuple[int, Prompt, Any]] = []  # (index, prompt, its PIL images in order)
        for i, prompt in enumerate(prompts):
            if len(prompt.images) > self.max_images:
                # vLLM would refuse it and fail its whole batch; say how to let it through instead.
                results[i] = Generation(text="", error=self._too_many_images(len(prompt.images)))
                continue
            try:
                images = _load_images(prompt)
            except ValueError as exc:
                results[i] = Generation(text="", error=f"image: {exc}")
                continue
            requests.append((i, prompt, images))
        # Prompts with a prefill continue the final assistant message, the others get a fresh assistant
        # turn; vLLM takes those flags per call, so each kind is one batched call.
        params = self._sampling(max_new_tokens)
        for prefilled in (False, True):
            group = [r for r in requests if bool(r[1].prefill) == prefilled]
            for i, output in self._chat(group, params, prefilled=prefilled):
                results[i] = (
                    output if isinstance(output, Generation) else self._to_generation(output, prompts[i])
                )
        self._score_forced(requests, results)
        return results  # type: ignore[return-value]

    def _too_many_images(self, n: int) -> str:
        return (
            f"{n} images, the engine takes at most {self.max_images} per prompt (--model-opt max_images={n})"
        )

    def _sampling(self, max_tokens: int) -> Any:
        return vllm.SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            logprobs=self.top_logprobs or None,
            repetition_penalty=self.repetition_penalty,
        )

    def _chat(self, group: list[tuple[int, Prompt, Any]], params: Any, *, prefilled: bool):
        """(index, RequestOutput, or an error Generation) per request, from one batched `LLM.chat`.

        If the call fails (one prompt longer than max_model_len fails all of it), each prompt is
        retried alone, so only the ones that cannot run become error Generations.
        """
        if not group:
            return
        try:
            outputs = self.llm.chat(
                [_vllm_messages(prompt, images) for _, prompt, images in group],
                sampling_params=params,
                use_tqdm=False,
                add_generation_prompt=not prefilled,
                continue_final_message=prefilled,
            )
        except Exception as exc:  # the contract: one prompt never sinks the batch
            if len(group) == 1:
                yield group[0][0], Generation(text="", error=f"{type(exc).__name__}: {exc}")
                return
            log.warning("vLLM batch of %d failed (%s); retrying one by one", len(group), exc)
            for one in group:
                yield from self._chat([one], params, prefilled=prefilled)
            return
        yield from zip((i for i, _, _ in group), outputs, strict=True)

    def _to_generation(self, output: Any, prompt: Prompt) -> Generation:
        completion = output.outputs[0]
        probs = None
        if prompt.options:
            probs = letter_probs_from_logprobs(_entries(completion), prompt.option_letters, prompt.prefill)
        return Generation(
            text=completion.text,
            letter_probs=probs,
            score_source="generation" if probs is not None else None,
            n_tokens=len(completion.token_ids),
        )

    def _score_forced(
        self, requests: list[tuple[int, Prompt, Any]], results: list[Generation | None]
    ) -> None:
        """Forced scores for completions without an answer letter: continue prefill + completion +
        `<answer>` by one token and read that token's top-k alternatives."""
        if not self.top_logprobs:
            return
        head = self._forced_head()
        todo: dict[int, tuple[int, Prompt, Any]] = {}
        for i, prompt, images in requests:
            gen = results[i]
            if prompt.options and gen is not None and gen.error is None and gen.letter_probs is None:
                todo[i] = (i, replace(prompt, prefill=prompt.prefill + gen.text + head), images)
        for i, output in self._chat(list(todo.values()), self._sampling(1), prefilled=True):
            if isinstance(output, Generation):  # the forced pass failed; the completion still stands
                continue
            continued = todo[i][1]
            probs = letter_probs_from_logprobs(
                _entries(output.outputs[0]), continued.option_letters, continued.prefill
            )
            gen = results[i]
            if probs is not None and gen is not None:
                gen.letter_probs, gen.score_source = probs, "forced"

    def _forced_head(self) -> str:
        """`<answer>`, or as much of it as the model's tokenizer keeps apart from the letter token."""
        try:
            found = forced_answer_prefix(self.llm.get_tokenizer(), "A")
        except Exception:  # no tokenizer at hand (skip_tokenizer_init): append the whole tag
            found = None
        return found[0] if found else ANSWER_TAG


def _load_images(prompt: Prompt) -> list[Any]:
    from vlmstress.data.images import load_images

    return load_images(prompt.images) if prompt.image is not None else []


def _vllm_messages(prompt: Prompt, images: Sequence[Any]) -> list[dict[str, Any]]:
    """chat_messages with each image as vLLM's offline `image_pil` part, in order; text-only turns
    as plain strings, which every chat template accepts."""
    pictures = iter(images)
    messages = []
    for message in chat_messages(prompt):
        parts = message["content"]
        if all(p["type"] == "text" for p in parts):
            content: Any = "".join(p["text"] for p in parts)
        else:
            content = [
                {"type": "image_pil", "image_pil": next(pictures)} if p["type"] == "image" else p
                for p in parts
            ]
        messages.append({"role": message["role"], "content": content})
    return messages


def _entries(completion: Any) -> list[dict[str, Any]]:
    """vLLM's per-token logprobs ({token id: Logprob}, chosen token included) in the OpenAI form that
    letter_probs_from_logprobs reads: {token, logprob, top_logprobs: [{token, logprob}]}."""
    entries = []
    for token_id, position in zip(completion.token_ids, completion.logprobs or [], strict=False):
        chosen = position.get(token_id)
        entries.append(
            {
                "token": chosen.decoded_token if chosen is not None else "",
                "logprob": chosen.logprob if chosen is not None else None,
                "top_logprobs": [
                    {"token": lp.decoded_token, "logprob": lp.logprob} for lp in position.values()
                ],
            }
        )
    return entries

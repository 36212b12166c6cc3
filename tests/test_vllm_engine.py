"""VLLMModel (`vllm:`) against a stand-in `vllm` module.

vLLM needs a GPU, so a fake module takes its place in sys.modules: `LLM` records the engine
arguments and every `chat` call (conversations, sampling params, template flags) and answers with
objects shaped like vLLM's RequestOutput / CompletionOutput / Logprob, so the request building and
the logprob parsing run for real.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from PIL import Image

from vlmstress.errors import UsageError
from vlmstress.models.registry import load_model
from vlmstress.perturb import Prompt

OPTIONS = ("red", "blue", "green")


# -- the stand-in vllm module, shaped after vllm/outputs.py and vllm/logprobs.py -------------------------


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = "stop"
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: None
    outputs: list[CompletionOutput]
    finished: bool = True


class SamplingParams:
    def __init__(self, **kwargs) -> None:
        self.__dict__.update(kwargs)


class Vocab:
    """Token text <-> id, grown on demand; `encode` splits like Qwen, merging `>` into a letter."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def id(self, text: str) -> int:
        return self.ids.setdefault(text, len(self.ids))

    def text(self, token_id: int) -> str:
        return next(t for t, i in self.ids.items() if i == token_id)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [self.id(piece) for piece in re.findall(r"<answer|>[A-Z]|\s?\w+|.", text)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.text(i) for i in ids)


# One generated token: its text, its logprob and the alternatives vLLM reports beside it.
Token = tuple[str, float, dict[str, float]]


@dataclass
class Call:
    conversations: list[list[dict]]
    params: SamplingParams
    flags: dict


@dataclass
class FakeLLM:
    model: str
    engine: dict
    respond: Callable[[list[dict], SamplingParams], list[Token]] | None = None
    calls: list[Call] = field(default_factory=list)
    vocab: Vocab = field(default_factory=Vocab)

    def get_default_sampling_params(self) -> SamplingParams:
        # Qwen2.5-VL-7B-Instruct's generation_config.json, as vLLM reads it.
        return SamplingParams(repetition_penalty=1.05, temperature=0.1, top_p=0.001, top_k=1)

    def get_tokenizer(self) -> Vocab:
        return self.vocab

    def chat(
        self,
        messages,
        sampling_params=None,
        use_tqdm=True,
        lora_request=None,
        chat_template=None,
        chat_template_content_format="auto",
        add_generation_prompt=True,
        continue_final_message=False,
        tools=None,
        chat_template_kwargs=None,
        mm_processor_kwargs=None,
    ):
        # vLLM's own signature, so a keyword it does not take fails here as it would there.
        if add_generation_prompt and continue_final_message:
            raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        self.calls.append(
            Call(
                messages,
                sampling_params,
                {
                    "add_generation_prompt": add_generation_prompt,
                    "continue_final_message": continue_final_message,
                    "use_tqdm": use_tqdm,
                },
            )
        )
        return [
            self._output(str(k), conversation, sampling_params) for k, conversation in enumerate(messages)
        ]

    def _output(self, request_id: str, conversation: list[dict], params: SamplingParams) -> RequestOutput:
        tokens = self.respond(conversation, params)[: params.max_tokens]
        logprobs = None
        if params.logprobs is not None:
            logprobs = [
                {self.vocab.id(t): Logprob(lp, 1, t)}
                | {self.vocab.id(alt): Logprob(alp, r + 2, alt) for r, (alt, alp) in enumerate(alts.items())}
                for t, lp, alts in tokens
            ]
        completion = CompletionOutput(
            0, "".join(t for t, _, _ in tokens), [self.vocab.id(t) for t, _, _ in tokens], None, logprobs
        )
        return RequestOutput(request_id, None, [1, 2, 3], None, [completion])


def fake_llm_class(respond):
    class LLM(FakeLLM):
        instances: list[FakeLLM] = []

        def __init__(self, model: str, **engine) -> None:
            super().__init__(model, engine, respond)
            LLM.instances.append(self)

    return LLM


@pytest.fixture
def vllm_engine(monkeypatch):
    """The vllm_engine module imported against a fresh fake `vllm`; `.respond` sets the answers."""
    fake = types.ModuleType("vllm")
    fake.SamplingParams = SamplingParams
    state = types.SimpleNamespace(respond=lambda conversation, params: tokens("<answer>A</answer>"))
    fake.LLM = fake_llm_class(lambda conversation, params: state.respond(conversation, params))
    monkeypatch.setitem(sys.modules, "vllm", fake)
    sys.modules.pop("vlmstress.models.vllm_engine", None)
    module = importlib.import_module("vlmstress.models.vllm_engine")
    module.fake, module.state = fake, state
    yield module
    sys.modules.pop("vlmstress.models.vllm_engine", None)  # do not leave it bound to the fake


def tokens(text: str, alternatives: dict[str, dict[str, float]] | None = None) -> list[Token]:
    """`text` as tokens with logprob -0.1 each; `alternatives` maps a token's text to its rivals."""
    alternatives = alternatives or {}
    return [(t, -0.1, alternatives.get(t, {})) for t in re.findall(r"<answer|>[A-Z]|</?\w+>?|\s?\w+|.", text)]


def prompt(sample_id="s1", *, prefill="", image=None, system=None, user="Which colour?") -> Prompt:
    return Prompt(sample_id, "base", user, image, OPTIONS, "B", prefill=prefill, system=system)


def calls(module) -> list[Call]:
    [llm] = module.fake.LLM.instances
    return llm.calls


def test_engine_arguments(vllm_engine):
    vllm_engine.VLLMModel("Qwen/Qwen2.5-VL-7B-Instruct")
    vllm_engine.VLLMModel(
        "RUBBISHLIKE/SpaceR",
        tensor_parallel_size=2,
        max_model_len=8192,
        gpu_memory_utilization=0.8,
        dtype="bfloat16",
        top_logprobs=32,
        limit_mm_per_prompt={"image": 2},
        enforce_eager=True,
    )
    default, custom = vllm_engine.fake.LLM.instances
    assert default.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert default.engine == {
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.9,
        "dtype": "auto",
        "limit_mm_per_prompt": {"image": 1},
    }
    assert custom.engine == {
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.8,
        "dtype": "bfloat16",
        "max_model_len": 8192,
        "limit_mm_per_prompt": {"image": 2},
        "enforce_eager": True,
        "max_logprobs": 32,  # vLLM refuses more than max_logprobs (default 20) per token
    }


def test_requests_use_chat_with_images_and_prefill(vllm_engine):
    model = vllm_engine.VLLMModel("Qwen/Qwen2.5-VL-7B-Instruct")
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    gens = model.generate(
        [
            prompt("a", image=image, system="Be brief."),
            prompt("b", prefill="<think>It is blue."),
            prompt("c"),
        ],
        max_new_tokens=64,
    )
    assert [g.error for g in gens] == [None, None, None]
    fresh, continued = calls(vllm_engine)
    # Fresh assistant turns in one call, prefilled ones continued in another: the flags are per call.
    assert fresh.flags == {"add_generation_prompt": True, "continue_final_message": False, "use_tqdm": False}
    assert continued.flags == {
        "add_generation_prompt": False,
        "continue_final_message": True,
        "use_tqdm": False,
    }
    system, user = fresh.conversations[0]
    assert system == {"role": "system", "content": "Be brief."}
    assert user["role"] == "user"
    [picture, text] = user["content"]  # the image first, as a PIL image: no encoding round trip
    assert picture["type"] == "image_pil" and picture["image_pil"].size == (20, 10)
    assert picture["image_pil"].getpixel((0, 0)) == (0, 0, 255)
    assert text == {"type": "text", "text": "Which colour?"}
    assert fresh.conversations[1] == [{"role": "user", "content": "Which colour?"}]
    assert continued.conversations == [
        [{"role": "user", "content": "Which colour?"}, {"role": "assistant", "content": "<think>It is blue."}]
    ]
    for call in (fresh, continued):
        params = call.params
        assert (params.temperature, params.max_tokens, params.logprobs) == (0.0, 64, 20)
        assert params.repetition_penalty == 1.05  # the checkpoint's, as transformers' generate applies it


def test_letter_probs_from_the_generated_letter(vllm_engine):
    rivals = {">B": {">A": -2.0, ">C": -3.0, "Ġthe": -4.0}}  # a non-letter rival is ignored
    vllm_engine.state.respond = lambda conversation, params: tokens(
        "<think>x</think><answer>B</answer>", rivals
    )
    model = vllm_engine.VLLMModel("m")
    [gen] = model.generate([prompt(image=Image.new("RGB", (8, 8)))], max_new_tokens=64)
    assert gen.text == "<think>x</think><answer>B</answer>"
    assert gen.score_source == "generation"
    assert gen.n_tokens == len(tokens(gen.text))
    mass = {"A": math.exp(-2.0), "B": math.exp(-0.1), "C": math.exp(-3.0)}
    assert gen.letter_probs == pytest.approx({k: v / sum(mass.values()) for k, v in mass.items()})
    assert len(calls(vllm_engine)) == 1  # no forced pass when the generation has the letter


def test_prefill_ending_in_the_answer_tag(vllm_engine):
    # The tag is in the prefill, the letter is the first generated token; " B" and "B" are one answer.
    rivals = {"C": {"A": -1.0, " B": -2.0, "B": -2.0}}
    vllm_engine.state.respond = lambda conversation, params: tokens("C</answer>", rivals)
    [gen] = vllm_engine.VLLMModel("m").generate(
        [prompt(prefill="<think>Green.</think><answer>")], max_new_tokens=8
    )
    mass = {"A": math.exp(-1.0), "B": 2 * math.exp(-2.0), "C": math.exp(-0.1)}
    assert gen.score_source == "generation"
    assert gen.letter_probs == pytest.approx({k: v / sum(mass.values()) for k, v in mass.items()})


def test_forced_score_when_the_completion_has_no_answer(vllm_engine):
    def respond(conversation, params):
        if params.max_tokens == 1:  # the forced pass: the next token after `<answer` is ">B"
            return tokens(">B", {">B": {">A": -1.5, ">C": -2.5}})
        return tokens("The sky is blue")

    vllm_engine.state.respond = respond
    image = Image.new("RGB", (8, 8))
    [gen] = vllm_engine.VLLMModel("m").generate([prompt(prefill="<think>", image=image)], max_new_tokens=16)
    assert gen.text == "The sky is blue"
    assert gen.score_source == "forced"
    mass = {"A": math.exp(-1.5), "B": math.exp(-0.1), "C": math.exp(-2.5)}
    assert gen.letter_probs == pytest.approx({k: v / sum(mass.values()) for k, v in mass.items()})
    _, forced = calls(vllm_engine)
    assert forced.flags["continue_final_message"] is True
    assert (forced.params.max_tokens, forced.params.logprobs) == (1, 20)
    [[user, assistant]] = forced.conversations
    assert user["content"][0]["image_pil"] is not None  # the same image, seen again
    # The tokenizer writes `<answer>B` as "<answer" + ">B", so only "<answer" is appended.
    assert assistant == {"role": "assistant", "content": "<think>The sky is blue<answer"}


def test_failures_stay_with_their_prompt(vllm_engine, tmp_path):
    def respond(conversation, params):
        if "TOO LONG" in str(conversation):
            raise ValueError("prompt is longer than max_model_len")
        return tokens("<answer>A</answer>")

    vllm_engine.state.respond = respond
    gens = vllm_engine.VLLMModel("m").generate(
        [prompt("ok"), prompt("long", user="TOO LONG"), prompt("bad", image=str(tmp_path / "missing.png"))],
        max_new_tokens=8,
    )
    ok, long, bad = gens
    assert ok.error is None and ok.text == "<answer>A</answer>"
    assert long.error == "ValueError: prompt is longer than max_model_len"
    assert bad.error.startswith("image:")
    # One failed batch of two, then each alone; the unreadable image never reached the engine.
    assert [len(c.conversations) for c in calls(vllm_engine)] == [2, 1, 1]


def test_no_logprobs_means_no_letter_scores(vllm_engine):
    [gen] = vllm_engine.VLLMModel("m", top_logprobs=0).generate([prompt()], max_new_tokens=8)
    assert gen.text == "<answer>A</answer>" and gen.letter_probs is None and gen.score_source is None
    [call] = calls(vllm_engine)
    assert call.params.logprobs is None


def test_registry_builds_it(vllm_engine):
    model = load_model("vllm:Video-R1/Video-R1-7B", tensor_parallel_size=4)
    assert type(model).__name__ == "VLLMModel" and model.name == "vllm:Video-R1/Video-R1-7B"
    assert vllm_engine.fake.LLM.instances[-1].engine["tensor_parallel_size"] == 4


def test_without_vllm_the_spec_is_a_usage_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "vlmstress.models.vllm_engine", raising=False)
    with pytest.raises(UsageError, match=r"pip install 'vlmstress\[vllm\]'"):
        load_model("vllm:Qwen/Qwen2.5-VL-7B-Instruct")


def test_two_images_are_two_image_parts_within_max_images(vllm_engine):
    red, blue = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
    two = Prompt("two", "base", "Which colour?", red, OPTIONS, "B", extra_images=(blue,))
    # The default engine takes one image a prompt: a two-image prompt is its own error, not a failed batch.
    over, alone = vllm_engine.VLLMModel("m").generate([two, prompt("one", image=red)], max_new_tokens=8)
    assert "2 images" in over.error and "max_images=2" in over.error and alone.error is None
    vllm_engine.fake.LLM.instances.clear()
    model = vllm_engine.VLLMModel("m", max_images=2)
    assert vllm_engine.fake.LLM.instances[0].engine["limit_mm_per_prompt"] == {"image": 2}
    [gen] = model.generate([two], max_new_tokens=8)
    assert gen.error is None
    [user] = calls(vllm_engine)[0].conversations[0]
    parts = user["content"]
    assert [p["type"] for p in parts] == ["image_pil", "image_pil", "text"]
    assert [p["image_pil"].getpixel((0, 0)) for p in parts[:2]] == [(255, 0, 0), (0, 0, 255)]

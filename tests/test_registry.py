"""Model and judge SPECs: every accepted form reaches its backend, every malformed one is a UsageError."""

from __future__ import annotations

import json
import sys
import types

import pytest
from fake_openai_server import FakeOpenAIServer

from vlmstress.errors import UsageError
from vlmstress.judge.llm import LLMJudge
from vlmstress.models.openai_api import OpenAIChatModel
from vlmstress.models.registry import load_judge, load_model, parse_spec, redact_spec
from vlmstress.models.replay import ReplayModel
from vlmstress.perturb import Prompt


@pytest.fixture
def fake_backends(monkeypatch):
    """Stand-ins for the torch backends, so SPEC dispatch is tested without loading any model."""
    calls: list[tuple] = []

    class Loaded:  # what a loader returns: a VLM by its protocol (load_model refuses anything else)
        def __init__(self, name):
            self.name = name

        def generate(self, prompts, *, max_new_tokens):
            raise AssertionError("never called")

    tiny = types.ModuleType("vlmstress.models.tiny")
    tiny.load_tiny = lambda path=None, **options: calls.append(("tiny", path, options)) or Loaded("TINY")

    class HFModel:
        @classmethod
        def from_pretrained(cls, path_or_id, **options):
            calls.append(("hf", path_or_id, options))
            return Loaded("HF")

    hf = types.ModuleType("vlmstress.models.hf")
    hf.HFModel = HFModel

    class VLLMModel:
        def __init__(self, path_or_id, **options):
            calls.append(("vllm", path_or_id, options))
            self.name = "VLLM"

        def generate(self, prompts, *, max_new_tokens):
            raise AssertionError("never called")

    vllm = types.ModuleType("vlmstress.models.vllm_engine")
    vllm.VLLMModel = VLLMModel

    for module in (tiny, hf, vllm):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return calls


def test_torch_backed_specs_reach_their_loaders(fake_backends):
    assert load_model("tiny").name == "TINY"
    load_model("tiny:/ckpt/step-100", device="cpu")
    assert load_model("hf:Qwen/Qwen2.5-VL-7B-Instruct", dtype="bfloat16").name == "HF"
    load_model("vllm:/models/spacer")
    assert fake_backends[:4] == [
        ("tiny", None, {}),
        ("tiny", "/ckpt/step-100", {"device": "cpu"}),
        ("hf", "Qwen/Qwen2.5-VL-7B-Instruct", {"dtype": "bfloat16"}),
        ("vllm", "/models/spacer", {}),
    ]


def test_missing_vllm_is_a_usage_error(monkeypatch):
    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'vllm'", name="vllm")

    broken = types.ModuleType("vlmstress.models.vllm_engine")
    broken.__getattr__ = missing  # the import of VLLMModel fails as if vllm were absent
    monkeypatch.setitem(sys.modules, "vlmstress.models.vllm_engine", broken)
    with pytest.raises(UsageError, match=r"pip install 'vlmstress\[vllm\]'"):
        load_model("vllm:Qwen/Qwen2.5-VL-7B-Instruct")


def test_openai_spec_builds_a_working_model(tmp_path):
    with FakeOpenAIServer(lambda req: "<answer>A</answer>") as server:
        model = load_model(f"openai:my-vlm@{server.base_url}", max_retries=0, cache_dir=tmp_path)
        assert isinstance(model, OpenAIChatModel)
        assert model.name == f"openai:my-vlm@{server.base_url}"
        [gen] = model.generate([Prompt("s", "base", "Q?", None, ("a", "b"), "A")], max_new_tokens=4)
        assert gen.text == "<answer>A</answer>"
        assert server.requests[0].body["model"] == "my-vlm"


def test_openai_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="prefill_mode"):
        load_model("openai:m@http://127.0.0.1:9/v1", prefill_mode="sideways")
    with pytest.raises(UsageError, match="batch_size"):
        load_model("openai:m@http://127.0.0.1:9/v1", batch_size=4)


def test_replay_spec(tmp_path):
    path = tmp_path / "saved.jsonl"
    path.write_text(json.dumps({"sample_id": "s", "variant": "base", "response": "B"}) + "\n")
    model = load_model(f"replay:{path}")
    assert isinstance(model, ReplayModel)
    assert model.generate([Prompt("s", "base", "Q?", None, ("a", "b"), "B")], max_new_tokens=4)[0].text == "B"
    with pytest.raises(UsageError, match="not found"):
        load_model(f"replay:{tmp_path / 'missing.jsonl'}")
    with pytest.raises(UsageError, match="no options"):
        load_model(f"replay:{path}", cache_dir=tmp_path)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "gpt-4o",
        "tiny:",
        "hf:",
        "hf:  ",
        "vllm:",
        "replay:",
        "torch:model",
        "Tiny",
        "openai:gpt-4o",  # no @
        "openai:@http://127.0.0.1:8000/v1",  # empty model
        "openai:gpt-4o@",  # empty URL
        "openai:gpt-4o@localhost:8000/v1",  # no scheme
        "openai:gpt-4o@ftp://host/v1",
    ],
)
def test_malformed_specs_are_one_line_usage_errors(spec):
    with pytest.raises(UsageError) as info:
        load_model(spec)
    message = str(info.value)
    assert "\n" not in message
    assert "openai:MODEL@BASE_URL" in message and "replay:FILE.jsonl" in message and "tiny:DIR" in message


def test_secrets_in_a_spec_are_not_repeated():
    spec = "openai:gpt-4o@https://alice:hunter22@api.example.org/v1?key=s3cret"
    assert redact_spec(spec) == "openai:gpt-4o@https://api.example.org/v1"
    with pytest.raises(UsageError) as info:
        load_model("openai:@https://alice:hunter22@api.example.org/v1")
    assert "hunter22" not in str(info.value)
    assert parse_spec(spec) == ("openai", "gpt-4o@https://alice:hunter22@api.example.org/v1?key=s3cret")


def test_rule_judge():
    from vlmstress.judge.rule import RuleJudge

    judge = load_judge("rule")
    assert isinstance(judge, RuleJudge) and judge.name == "rule"


def test_model_spec_judge_is_named_without_secrets():
    judge = load_judge("openai:judge-32b@http://bob:pw123@127.0.0.1:8000/v1?token=abc", max_retries=0)
    assert isinstance(judge, LLMJudge) and isinstance(judge.model, OpenAIChatModel)
    assert judge.name == "openai:judge-32b@http://127.0.0.1:8000/v1"


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("rules", r"unknown judge 'rules' \(known: rule\), nor a model SPEC \(tiny, tiny:DIR, hf:"),
        ("", r"unknown judge '' \(known: rule\)"),
        ("openai:judge", r"openai needs MODEL@BASE_URL"),
        ("rule:strict", r"rule takes no target"),
    ],
)
def test_malformed_judge_specs(spec, why):
    with pytest.raises(UsageError, match=rf"^bad judge SPEC '{spec}': {why}"):
        load_judge(spec)

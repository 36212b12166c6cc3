"""System prompts: the documented table, --system / system=, what each backend is sent, and the
system prompt as part of a run's identity."""

from __future__ import annotations

import json

import pytest
from fake_openai_server import FakeOpenAIServer

import vlmstress
from vlmstress.api import prepare_eval
from vlmstress.cli import main
from vlmstress.data import synth
from vlmstress.errors import UsageError
from vlmstress.models.hf import HFModel
from vlmstress.models.system_prompts import DOCUMENTED, documented_system, resolve_system
from vlmstress.train.augment import augment, build_dataset

VLAA = "UCSC-VLAA/VLAA-Thinker-Qwen2.5VL-7B"
MARK = "You are a careful spatial reasoner."


@pytest.mark.parametrize("spec", [f"hf:{VLAA}", f"vllm:{VLAA}", f"openai:{VLAA}@http://127.0.0.1:8000/v1"])
def test_a_documented_hub_id_gets_its_system_prompt(spec):
    text = documented_system(spec)
    assert text is not None and text.startswith("You are VL-Thinking\U0001f914, a helpful assistant")
    assert text.endswith("<think> reasoning process here </think> <answer> answer here </answer>")


@pytest.mark.parametrize(
    "spec", ["tiny", "hf:Qwen/Qwen2.5-VL-7B-Instruct", "hf:/ckpt/UCSC-VLAA/VLAA-Thinker", "replay:r.jsonl"]
)
def test_other_models_get_none(spec):
    assert documented_system(spec) is None


def test_given_system_prompt_wins_and_empty_turns_it_off():
    assert resolve_system(f"hf:{VLAA}", None) == DOCUMENTED[VLAA]
    assert resolve_system(f"hf:{VLAA}", MARK) == MARK
    assert resolve_system(f"hf:{VLAA}", "") is None
    # prepare_eval records the resolved prompt without loading the model
    assert prepare_eval(f"hf:{VLAA}", "synth:2").spec.system == DOCUMENTED[VLAA]
    assert prepare_eval(f"hf:{VLAA}", "synth:2", system="").spec.system is None


def test_system_prompt_reaches_the_tiny_chat_template_and_is_the_runs_identity(tmp_path, monkeypatch):
    rendered: list[str] = []
    original = HFModel.prompt_text

    def spy(self, prompt):
        rendered.append(original(self, prompt))
        return rendered[-1]

    monkeypatch.setattr(HFModel, "prompt_text", spy)
    out = tmp_path / "run"
    vlmstress.evaluate("tiny", "synth:2", variants=["base"], judges=[], out=out, system=MARK)
    assert len(rendered) == 2
    assert all(f"<|im_start|>system\n{MARK}<|im_end|>" in text for text in rendered)
    assert json.loads((out / "config.json").read_text())["system"] == MARK
    with pytest.raises(UsageError, match="different system"):
        vlmstress.evaluate("tiny", "synth:2", variants=["base"], judges=[], out=out, system="Other.")
    # with no system prompt the tiny model's own template has none of ours
    rendered.clear()
    vlmstress.evaluate("tiny", "synth:1", variants=["base"], judges=[])
    assert rendered and MARK not in rendered[0]


def test_system_prompt_is_the_first_message_the_server_gets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAIServer() as server:
        server.respond = lambda req: "<think>Blue.</think><answer>B</answer>"
        model = f"openai:fake-vlm@{server.base_url}"
        vlmstress.evaluate(model, "synth:2", variants=["base"], judges=[], system=MARK)
        prompts = [req for req in server.requests if not req.is_probe]
    assert len(prompts) == 2
    assert all(req.messages[0] == {"role": "system", "content": MARK} for req in prompts)
    assert all(req.messages[1]["role"] == "user" for req in prompts)


def test_cli_reads_system_from_a_file_and_refuses_a_missing_one(tmp_path, capsys):
    missing = tmp_path / "out-missing"
    code = main(["eval", "--model", "tiny", "--data", "synth:1", "--variants", "base", "--judge", "rule",
                 "--system", f"@{tmp_path / 'nope.txt'}", "--out", str(missing)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--system @" in err and "no such file" in err and len(err.splitlines()) == 1
    assert not missing.exists()
    prompt_file = tmp_path / "system.txt"
    prompt_file.write_text(MARK + "\n")
    out = tmp_path / "out"
    code = main(["eval", "--model", "tiny", "--data", "synth:1", "--variants", "base",
                 "--system", f"@{prompt_file}", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert json.loads((out / "config.json").read_text())["system"] == MARK


def test_training_prompts_carry_the_system_turn():
    [sample] = synth.generate(1, seed=0, split="train")
    assert augment(sample, 0, system=MARK).system == MARK
    [row] = build_dataset([sample], 0, system=MARK)
    assert row["prompt"][0] == {"role": "system", "content": MARK}
    assert row["prompt"][1]["role"] == "user"

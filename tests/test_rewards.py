"""GRPO rewards on hand-made completions, plain and conversational, with and without a prefill."""

from __future__ import annotations

import sys

import pytest
import yaml

from vlmstress.errors import UsageError
from vlmstress.judge.base import Verdict
from vlmstress.train.config import GRPORunConfig, load_config
from vlmstress.train.rewards import (
    REWARDS,
    accuracy_reward,
    faithful,
    format_reward,
    register_reward,
    resolve_reward,
    verl_compute_score,
    weighted_total,
)

OPTIONS = ["red", "green", "blue", "white"]
QUESTION = "What colour is the small circle?"
USER = [{"role": "user", "content": QUESTION}]


def conv(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def with_prefill(prefill: str) -> list[dict]:
    return [*USER, {"role": "assistant", "content": prefill}]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>The circle is blue.</think><answer>C</answer>", 1.0),
        ("  <think>x</think>\n<answer> C </answer>\n", 1.0),
        ("<think>x</think><answer>C</answer> trailing words", 0.0),
        ("preamble <think>x</think><answer>C</answer>", 0.0),
        ("<think>x</think>", 0.0),
        ("<answer>C</answer>", 0.0),
        ("<think>x</think><answer></answer>", 0.0),
        ("<think> </think><answer>C</answer>", 0.0),
        ("<think>a</think><think>b</think><answer>C</answer>", 0.0),
        ("<think>a <answer>B</answer></think><answer>C</answer>", 0.0),
        ("<answer>C</answer><think>x</think>", 0.0),
        ("", 0.0),
    ],
)
def test_format_reward_plain_and_conversational(completion, expected):
    assert format_reward([QUESTION], [completion]) == [expected]
    assert format_reward([USER], [conv(completion)]) == [expected]


def test_format_reward_counts_the_prefill():
    prompt = with_prefill("<think>The small circle is blue. The answer is blue, option C.</think>")
    assert format_reward([prompt], [conv("<answer>C</answer>")]) == [1.0]
    # The policy repeating a whole turn after a closed think prefill is malformed.
    assert format_reward([prompt], [conv("<think>again</think><answer>C</answer>")]) == [0.0]
    # Content-part messages (as TRL passes prompts after adding the image) read the same.
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "<think>blue</think>"}]}]
    assert format_reward([parts], ["<answer>C</answer>"]) == [1.0]


def test_accuracy_reward():
    prompts = [USER] * 6
    completions = [
        conv("<think>blue</think><answer>C</answer>"),
        conv("<think>red</think><answer>A</answer>"),
        conv("<think>it is blue</think><answer>blue</answer>"),  # option text counts as its letter
        conv("The answer is (C)."),  # lenient fallback, as evaluation parses it
        conv("<think>no idea</think>"),
        conv("<answer>E</answer>"),  # not an option
    ]
    rewards = accuracy_reward(prompts, completions, target=["C"] * 6, options=[OPTIONS] * 6)
    assert rewards == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]


def test_accuracy_reward_without_options_and_with_prefill():
    prompt = with_prefill("<think>The small circle is blue.</think>")
    assert accuracy_reward([prompt], ["<answer>B</answer>"], target=["B"]) == [1.0]
    assert accuracy_reward([QUESTION], ["<think>x</think><answer>B</answer>"], target=[None]) == [0.0]


def test_faithful_with_the_rule_judge():
    reward = faithful(accuracy_reward)
    assert reward.__name__ == "faithful_accuracy_reward"
    blue = "<think>The small circle is blue. The answer is blue, option C.</think>"
    red = "<think>The small circle is red. The answer is red, option A.</think>"
    completions = [
        blue + "<answer>C</answer>",  # consistent
        red + "<answer>C</answer>",  # inconsistent
        "<think>Hmm.</think><answer>C</answer>",  # the judge cannot tell: unknown
        red + "<answer>A</answer>",  # consistent but wrong
    ]
    got = reward([USER] * 4, completions, target=["C"] * 4, options=[OPTIONS] * 4, question=[QUESTION] * 4)
    assert got == [1.0, 0.0, 0.0, 0.0]
    assert faithful(format_reward, "rule")([USER] * 4, completions, options=[OPTIONS] * 4) == [
        1.0,
        0.0,
        0.0,
        1.0,
    ]


def test_faithful_reads_a_prefilled_think():
    prompt = with_prefill("<think>The small circle is red. The answer is red, option A.</think>")
    reward = faithful(format_reward)
    assert reward([prompt], ["<answer>A</answer>"], options=[OPTIONS]) == [1.0]
    assert reward([prompt], ["<answer>C</answer>"], options=[OPTIONS]) == [0.0]


class _Judge:
    name = "fixed"

    def __init__(self, verdict):
        self.verdict = verdict
        self.items = []

    def judge(self, items):
        self.items += items
        return [Verdict(self.verdict, None, self.name) for _ in items]


@pytest.mark.parametrize(("verdict", "expected"), [("consistent", 1.0), ("error", 0.0), ("unknown", 0.0)])
def test_faithful_any_judge(verdict, expected):
    judge = _Judge(verdict)
    got = faithful(format_reward, judge)(
        [USER], ["<think>blue</think><answer>C</answer>"], options=[OPTIONS], question=[QUESTION]
    )
    assert got == [expected]
    item = judge.items[0]
    assert (item.question, item.think, item.answer, item.options) == (QUESTION, "blue", "C", tuple(OPTIONS))


def test_weighted_total_and_verl_adapter():
    good = "<think>The small circle is blue. The answer is blue, option C.</think><answer>C</answer>"
    total = weighted_total(
        [format_reward, accuracy_reward],
        [0.1, 1.0],
        [USER, USER],
        [good, "C"],
        target=["C", "C"],
        options=[OPTIONS, OPTIONS],
    )
    assert total == pytest.approx([1.1, 1.0])
    assert verl_compute_score("synth", good, "C", {"options": OPTIONS}) == pytest.approx(1.1)
    assert verl_compute_score("synth", "<answer>A</answer>", "C") == 0.0
    assert verl_compute_score(
        "synth", "<answer>C</answer>", "C", {"prefill": "<think>blue</think>", "faithful": True}
    ) == pytest.approx(0.0)


# --- the registry a GRPO config names its rewards from ----------------------------------------------


@pytest.fixture
def registry(registries):
    return REWARDS


def test_register_reward_refuses_a_taken_or_unnameable_name(registry):
    before = dict(registry)
    for name in ("format", "accuracy"):
        with pytest.raises(ValueError, match="already registered"):
            register_reward(name)
    with pytest.raises(ValueError, match="cannot hold ':'"):
        register_reward("mod:fn")
    for name in ("two words", ""):
        with pytest.raises(ValueError, match="non-empty string without spaces"):
            register_reward(name)
    assert registry == before

    @register_reward("always_one")
    def always_one(prompts, completions, **columns):
        return [1.0] * len(completions)

    assert resolve_reward("always_one") is always_one


def test_a_config_names_a_registered_reward_or_module_function(tmp_path, monkeypatch):
    (tmp_path / "user_rewards_for_test.py").write_text(
        "def brevity(prompts, completions, **columns):\n"
        "    return [1.0 / (1 + len(c)) for c in completions]\n"
        "NOT_A_FUNCTION = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_rewards_for_test", raising=False)

    def config_with(fn: str):
        path = tmp_path / "grpo.yaml"
        path.write_text(yaml.safe_dump({"rewards": [{"fn": fn, "weight": 1.0}]}))
        return load_config(path, GRPORunConfig)

    assert resolve_reward(config_with("format").rewards[0].fn) is format_reward
    brevity = resolve_reward(config_with("user_rewards_for_test:brevity").rewards[0].fn)
    assert brevity([[]], ["abc"]) == [0.25]
    for bad, needle in [
        ("nosuch", "rewards.0.fn: .*unknown reward 'nosuch'"),
        ("no_such_module_anywhere:f", "cannot import 'no_such_module_anywhere'"),
        ("user_rewards_for_test:nosuch", "has no function 'nosuch'"),
        ("user_rewards_for_test:NOT_A_FUNCTION", "has no function"),
        ("os:system", "has no function 'system'"),  # a builtin is no reward
    ]:
        with pytest.raises(UsageError, match=needle):
            config_with(bad)

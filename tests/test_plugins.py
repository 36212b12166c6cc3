"""User code: `--include FILE.py` on every command, the shipped examples/ used from the command line,
and GRPO rewards named by a registry (register_reward) or as module:function."""

import json
from pathlib import Path

import pytest
import yaml

from vlmstress import plugins
from vlmstress.cli import main
from vlmstress.perturb import VARIANTS, perturb
from vlmstress.train.config import GRPORunConfig, load_config

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_user_variant_from_examples_runs_from_the_command_line(tmp_path, capsys, registries):
    # In this process (the command line's own main), so the registries can be put back after it.
    out = tmp_path / "run"
    args = ["eval", "--model", "tiny", "--data", "synth:3", "--variants", "base,peer_pressure"]
    # Without the file the name is unknown: one line, exit 2, nothing created.
    assert main([*args, "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "unknown variant 'peer_pressure' (known: base, " in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "none").exists()
    assert main([*args, "--out", str(out), "--include", str(EXAMPLES / "my_variant.py")]) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    pressured = [r for r in records if r["variant"] == "peer_pressure"]
    assert len(pressured) == 3 and all(r["misleading"] and r["error"] is None for r in pressured)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["variants"]["peer_pressure"]["followed_misleading"] is not None


def test_the_example_variant_argues_for_the_misleading_letter(registries):
    from vlmstress.data import synth

    plugins.load_file(EXAMPLES / "my_variant.py")
    sample = synth.generate(1)[0]
    p = perturb(sample, "peer_pressure", 0)
    assert p.variant == "peer_pressure" and p.misleading and p.misleading != sample.target
    assert p.user.startswith(f"Most people who answered this chose {p.misleading}.\n")
    assert p.user.endswith(perturb(sample, "base", 0).user) and p.prefill == ""


BAD_FILES = {
    "raises.py": "raise RuntimeError('no GPU here')\n",
    "syntax.py": "def broken(:\n",
    "collides.py": "from vlmstress import register_variant\nregister_variant('base')(lambda s, m, t: None)\n",
}
COMMANDS = [
    ["eval", "--model", "tiny", "--data", "synth:2", "--out", "{out}"],
    ["data", "synth", "--n", "2", "--out", "{out}"],
    ["report", "{out}", "--html", "{out}/r.html"],
    ["demo", "--no-train", "--n", "2", "--out", "{out}"],
    ["train", "sft", "--config", "{out}/nonexistent.yaml", "--out", "{out}"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("bad", [*BAD_FILES, "missing.py", "notes.txt"])
def test_a_bad_include_stops_every_command_before_it_starts(tmp_path, capsys, registries, command, bad):
    path = tmp_path / bad
    if bad in BAD_FILES:
        path.write_text(BAD_FILES[bad])
    elif bad == "notes.txt":
        path.write_text("x = 1\n")
    out = tmp_path / "out"
    before = dict(VARIANTS)
    assert main([*(a.format(out=out) for a in command), "--include", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--include {path}" in err[0], err
    assert not out.exists() and before == VARIANTS


def test_include_imports_each_file_once_and_in_order(tmp_path, registries):
    first, second = tmp_path / "a.py", tmp_path / "b.py"
    first.write_text("from vlmstress import register_variant\nregister_variant('twice_a')(print)\n")
    second.write_text("from vlmstress.perturb import VARIANTS\nassert 'twice_a' in VARIANTS\nFLAG = 1\n")
    modules = plugins.include([first, second])
    assert modules[1].FLAG == 1
    # Again in the same process (a notebook, a second main()): not run again, so no collision.
    assert plugins.include([first, second]) == modules


def write_grpo_config(tmp_path, **overrides) -> Path:
    raw = {"rewards": [{"fn": "accuracy", "weight": 1.0}, {"fn": "concise", "weight": 0.1}], **overrides}
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_user_reward_is_named_in_a_grpo_config_from_the_command_line(tmp_path, capsys, registries):
    # `template: nosuch` makes train_grpo stop at its own first check, after the config (and its
    # rewards) validated and before any model loads: the command line, without a training run.
    cfg = write_grpo_config(
        tmp_path, template="nosuch", dynamics={"variants": ["base", "peer_pressure"]}, out=str(tmp_path / "o")
    )
    assert main(["train", "grpo", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "unknown reward 'concise'" in err
    include = ["--include", str(EXAMPLES / "my_reward.py"), "--include", str(EXAMPLES / "my_variant.py")]
    assert main(["train", "grpo", "--config", str(cfg), *include]) == 2
    assert "unknown template 'nosuch'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_user_reward_reaches_trl_through_the_registry(tmp_path, registries):
    from vlmstress.train.grpo import reward_functions

    plugins.load_file(EXAMPLES / "my_reward.py")
    cfg = load_config(write_grpo_config(tmp_path), GRPORunConfig)
    funcs, weights = reward_functions(cfg)
    assert [f.__name__ for f in funcs] == ["accuracy_reward", "concise_reward"] and weights == [1.0, 0.1]
    short = "<think>The red cube is left.</think><answer>A</answer>"
    rambling = "<think>" + "hmm " * 200 + "</think><answer>A</answer>"
    assert funcs[1]([[], []], [short, rambling]) == [1.0, 0.0]


def test_user_metric_from_examples_is_in_metrics_json_from_the_command_line(tmp_path, capsys, registries):
    out = tmp_path / "run"
    args = ["eval", "--model", "tiny", "--data", "synth:6", "--variants", "base,wrong_think"]
    assert main([*args, "--out", str(out), "--include", str(EXAMPLES / "my_metric.py")]) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    for variant in ("base", "wrong_think"):
        rs = [r for r in records if r["variant"] == variant and r["answer"] is not None]
        expected = sum(not r["correct"] and r["letter_probs"][r["answer"]] >= 0.9 for r in rs) / len(rs)
        assert metrics["variants"][variant]["user_metrics"] == {"confidently_wrong": expected}
    # the tiny model follows a wrong think, and is sure of it: the metric is not trivially 0
    assert metrics["variants"]["wrong_think"]["user_metrics"]["confidently_wrong"] > 0
    assert "| variant | confidently_wrong |" in (out / "summary.md").read_text()

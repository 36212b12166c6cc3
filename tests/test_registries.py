"""The one registry mechanism (vlmstress/registry.py) for every kind a user adds by name: each kind
registered and used by name (from Python, and through --include from the command line), collisions
refused, unknown names one line listing the known ones, and installed plugins found by their
`vlmstress.plugins` entry point."""

import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import vlmstress
from vlmstress import plugins
from vlmstress.cli import main
from vlmstress.data import synth
from vlmstress.errors import UsageError
from vlmstress.metrics import METRICS
from vlmstress.models.registry import BACKENDS, JUDGES, load_judge, load_model, model_forms
from vlmstress.perturb import TEMPLATES, VARIANTS, Template, perturb
from vlmstress.registry import Registry
from vlmstress.train import augment
from vlmstress.train.augment import AUGMENTATIONS
from vlmstress.train.config import DataSource, GRPORunConfig, validated
from vlmstress.train.data import SOURCES, load_source
from vlmstress.train.rewards import REWARDS

PLUGINS = Path(__file__).parent / "plugins"
SRC = Path(vlmstress.__file__).parent.parent


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --- the mechanism -----------------------------------------------------------------------------------


def test_a_registry_adds_by_decorator_refuses_a_taken_name_and_lists_known_names():
    things = Registry("thing", check_name=lambda n: "is reserved" if n == "all" else None)

    @things.register("a")
    def a():
        pass

    things.add("b", 2)
    assert list(things) == ["a", "b"] and things["a"] is a and things.lookup("b") == 2 and len(things) == 2
    with pytest.raises(ValueError, match=r"thing 'a' is already registered \(by .*test_a_registry.*\.a\)"):
        things.register("a")
    with pytest.raises(ValueError, match="thing name 'all' is reserved"):
        things.register("all")
    with pytest.raises(ValueError, match="non-empty string without spaces"):
        things.add("x y", 3)
    with pytest.raises(UsageError, match=r"^unknown thing 'c' \(known: a, b\)$"):
        things.lookup("c")
    with pytest.raises(UsageError, match=r"^unknown things 'c', 'd' \(known: a, b\)$"):
        things.require(["a", "c", "d"])
    with pytest.raises(TypeError):  # read-only: a name is only ever added through register / add
        things["a"] = 1  # type: ignore[index]
    assert dict(things) == {"a": a, "b": 2}


REGISTRIES = {
    "variant": VARIANTS,
    "template": TEMPLATES,
    "backend": BACKENDS,
    "judge": JUDGES,
    "reward": REWARDS,
    "augmentation kind": AUGMENTATIONS,
    "training source": SOURCES,
}
TAKEN = {
    "variant": lambda: vlmstress.register_variant("base")(lambda s, m, t: None),
    "template": lambda: vlmstress.register_template(Template("vlmstress", "Answer.")),
    "backend": lambda: vlmstress.register_backend("tiny")(lambda target=None: None),
    "judge": lambda: vlmstress.register_judge("rule")(lambda: None),
    "reward": lambda: vlmstress.register_reward("format")(lambda prompts, completions, **c: []),
    "augmentation kind": lambda: vlmstress.register_augmentation("wrong_think")(lambda s, seed, t: None),
    "training source": lambda: vlmstress.register_source("synth")(lambda *, seed: []),
}


@pytest.mark.parametrize("kind", TAKEN)
def test_every_kind_refuses_a_name_already_taken(kind, registries):
    registry = REGISTRIES[kind]
    assert registry.kind == kind
    before = {name: registry[name] for name in registry}
    with pytest.raises(ValueError, match=f"{kind} '.*' is already registered"):
        TAKEN[kind]()
    assert dict(registry) == before


def test_a_metric_name_is_taken_once_and_judge_and_backend_names_never_overlap(registries):
    vlmstress.register_metric("twice")(lambda records: 1.0)
    with pytest.raises(ValueError, match="metric 'twice' is already registered"):
        vlmstress.register_metric("twice")
    # `--judge NAME` reads a judge or a model SPEC: one name cannot be both.
    with pytest.raises(ValueError, match="judge name 'hf' is a backend's name"):
        vlmstress.register_judge("hf")
    with pytest.raises(ValueError, match="backend name 'rule' is a judge's name"):
        vlmstress.register_backend("rule")
    for register in (vlmstress.register_backend, vlmstress.register_judge):
        with pytest.raises(ValueError, match="cannot hold ':'"):
            register("a:b")
    assert "rule" not in BACKENDS and "hf" not in JUDGES and list(METRICS) == ["twice"]


def eval_args(out, *extra):
    return ["eval", "--data", "synth:2", "--out", str(out), *extra]


def grpo_config(tmp_path, **fields) -> list[str]:
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), **fields}))
    return ["train", "grpo", "--config", str(path)]


UNKNOWN = {
    "variant": (
        lambda tmp: eval_args(tmp / "out", "--model", "tiny", "--variants", "base,bogus"),
        "unknown variant 'bogus' (known: base, stop_think, wrong_think, wrong_think_hedge, wrong_caption, "
        "wrong_caption_hedge, correct_think, correct_caption, abstain)",
    ),
    "template": (
        lambda tmp: eval_args(tmp / "out", "--model", "tiny", "--template", "bogus"),
        "unknown template 'bogus' (known: vlmstress, mmbench, mme-realworld)",
    ),
    "backend": (
        lambda tmp: eval_args(tmp / "out", "--model", "bogus:x"),
        "unknown backend 'bogus' (known: tiny, hf, vllm, openai, replay)",
    ),
    "judge": (
        lambda tmp: eval_args(tmp / "out", "--model", "tiny", "--judge", "rule", "bogus"),
        "unknown judge 'bogus' (known: rule)",
    ),
    "reward": (
        lambda tmp: grpo_config(tmp, rewards=[{"fn": "bogus", "weight": 1.0}]),
        "unknown reward 'bogus' (known: format, accuracy; or module:function)",
    ),
    "augmentation kind": (
        lambda tmp: grpo_config(tmp, augment={"bogus": 0.1}),
        "unknown augmentation kind 'bogus' (known: correct_think, wrong_think, correct_caption, "
        "wrong_caption)",
    ),
    "training source": (
        lambda tmp: grpo_config(tmp, data=[{"source": "bogus"}]),
        "unknown training source 'bogus' (known: synth, sat, pixmo-count)",
    ),
}


@pytest.mark.parametrize("kind", UNKNOWN)
def test_an_unknown_name_is_one_line_listing_the_known_ones(kind, tmp_path, capsys):
    args, message = UNKNOWN[kind]
    assert main(args(tmp_path)) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_the_known_names_include_the_registered_ones(tmp_path, capsys, registries):
    include = ["--include", str(PLUGINS / "chance_backend.py"), "--include", str(PLUGINS / "letter_judge.py")]
    assert main([*eval_args(tmp_path / "out", "--model", "bogus:x"), *include]) == 2
    assert "unknown backend 'bogus' (known: tiny, hf, vllm, openai, replay, chance)" in one_error_line(capsys)
    assert main([*eval_args(tmp_path / "out", "--model", "chance", "--judge", "bogus"), *include]) == 2
    assert "unknown judge 'bogus' (known: rule, letter), nor a model SPEC (" in one_error_line(capsys)
    assert "chance, chance:TARGET" in model_forms()


# --- backends and judges -----------------------------------------------------------------------------


def test_a_user_backend_and_judge_run_from_the_command_line(tmp_path, capsys, registries):
    """tests/plugins/chance_backend.py (a VLM class) and letter_judge.py (a Judge class), named by
    --model and --judge: every record is the chance model's answer, judged by both judges, and the
    metrics are those of a uniform guess (entropy ln k, P(correct) 1/k)."""
    out = tmp_path / "run"
    include = ["--include", str(PLUGINS / "chance_backend.py"), "--include", str(PLUGINS / "letter_judge.py")]
    args = ["eval", "--model", "chance:7", "--data", "synth:8", "--variants", "base,wrong_think,abstain"]
    args += ["--judge", "rule", "letter", "--model-opt", "think=Hmm, hard to say.", "--out", str(out)]
    assert main([*args, *include]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "chance:7" and config["judges"] == ["rule", "letter"]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 8 * 3 and all(r["error"] is None for r in records)
    for r in records:
        letters = sorted(r["letter_probs"])
        pick = random.Random(f"7:{r['sample_id']}:{r['variant']}").choice(letters)
        assert r["answer"] == pick and r["correct"] == (pick == r["target"])
        assert r["letter_probs"] == dict.fromkeys(letters, 1 / len(letters))
        assert r["variant"] == "wrong_think" or "Hmm, hard to say." in r["think"]
        # the letter judge's verdict, from the think and the answer alone
        named = re.findall(rf"\b([{''.join(letters)}])\b", r["think"])
        expected = "unknown" if not named else "consistent" if named[-1] == pick else "inconsistent"
        assert {v["by"]: v["verdict"] for v in r["judges"]}["letter"] == expected
    verdicts = {v["verdict"] for r in records for v in r["judges"] if v["by"] == "letter"}
    assert "unknown" in verdicts and verdicts & {"consistent", "inconsistent"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["judges"]) == {"rule", "letter"}
    for variant, m in metrics["variants"].items():
        rs = [r for r in records if r["variant"] == variant]
        ks = [len(r["letter_probs"]) for r in rs]
        assert m["accuracy"] == pytest.approx(np.mean([r["correct"] for r in rs]))
        assert m["mean_entropy"] == pytest.approx(np.mean([math.log(k) for k in ks]))
        assert m["mean_p_correct"] == pytest.approx(np.mean([1 / k for k in ks]))


def test_a_user_backend_option_it_does_not_take_is_refused_before_anything_is_made(
    tmp_path, capsys, registries
):
    out = tmp_path / "run"
    args = [
        "eval",
        "--model",
        "chance",
        "--data",
        "synth:2",
        "--model-opt",
        "temperature=0",
        "--out",
        str(out),
    ]
    assert main([*args, "--include", str(PLUGINS / "chance_backend.py")]) == 2
    assert "chance model options: got an unexpected keyword argument 'temperature'" in one_error_line(capsys)
    assert not out.exists()


def test_user_backend_and_judge_from_python(registries):
    plugins.load_file(PLUGINS / "chance_backend.py")
    plugins.load_file(PLUGINS / "letter_judge.py")
    model, judge = load_model("chance:1"), load_judge("letter")
    assert type(model).__name__ == "ChanceModel" and model.name == "chance:1" and judge.name == "letter"
    result = vlmstress.evaluate("chance", "synth:3", variants="base", judges=["letter"])
    assert result.metrics["model"] == "chance" and len(result.records) == 3
    assert {r["judge"]["by"] for r in result.records} == {"letter"}
    with pytest.raises(UsageError, match="bad judge SPEC 'letter:x': letter takes no target"):
        load_judge("letter:x")

    @vlmstress.register_backend("no_model")
    def no_model(target):
        return "not a model"

    with pytest.raises(UsageError, match=r"no_model needs a target \(no_model:TARGET\)"):
        load_model("no_model")
    with pytest.raises(TypeError, match="backend 'no_model' made a str, not a VLM"):
        load_model("no_model:x")


# --- templates ---------------------------------------------------------------------------------------


def test_a_user_template_is_selected_by_name(tmp_path, capsys, registries):
    file = tmp_path / "terse.py"
    file.write_text(
        "from vlmstress import register_template\nfrom vlmstress.perturb import Template\n"
        "register_template(\n"
        "    Template('terse', 'Reply with the letter only.', option_format='[{letter}] {text}')\n"
        ")\n"
    )
    include = ["--include", str(PLUGINS / "chance_backend.py"), "--include", str(file)]
    out = tmp_path / "run"
    assert (
        main(
            [
                "eval",
                "--model",
                "chance",
                "--data",
                "synth:2",
                "--template",
                "terse",
                "--out",
                str(out),
                *include,
            ]
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["template"] == "terse"
    user = perturb(synth.generate(1)[0], "base", 0, TEMPLATES.lookup("terse")).user
    assert user.endswith("\nReply with the letter only.") and "\n[A] " in user
    with pytest.raises(TypeError, match="takes a vlmstress.perturb.Template"):
        vlmstress.register_template("terse2")


# --- metrics -----------------------------------------------------------------------------------------


def test_a_user_metric_that_fails_or_is_no_number_is_null_with_a_warning(tmp_path, registries):
    plugins.load_file(PLUGINS / "chance_backend.py")

    @vlmstress.register_metric("answered")
    def answered(records):
        return np.int64(sum(r["answer"] is not None for r in records))  # numpy's int, written as an int

    vlmstress.register_metric("broken")(lambda records: 1 / 0)
    vlmstress.register_metric("wordy")(lambda records: "high")
    vlmstress.register_metric("infinite")(lambda records: float("inf"))
    vlmstress.register_metric("unknowable")(lambda records: None)  # None: cannot be computed, no warning
    result = vlmstress.evaluate(
        "chance", "synth:3", variants="base,wrong_think", judges=[], out=tmp_path / "r"
    )
    for variant in ("base", "wrong_think"):
        assert result.metrics["variants"][variant]["user_metrics"] == {
            "answered": 3,
            "broken": None,
            "wordy": None,
            "infinite": None,
            "unknowable": None,
        }
    warnings = [w for w in result.metrics["warnings"] if w.startswith("metric ")]
    assert warnings == [
        f"metric {name} on {variant} {why}; it is null"
        for variant in ("base", "wrong_think")
        for name, why in [
            ("broken", "failed: ZeroDivisionError: division by zero"),
            ("wordy", "returned a str, not a number"),
            ("infinite", "returned inf, not a finite number"),
        ]
    ]
    on_disk = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert on_disk["variants"]["base"]["user_metrics"]["answered"] == 3
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "| variant | answered | broken | wordy | infinite | unknowable |" in summary
    assert "| base | 3 | – | – | – | – |" in summary


def test_a_user_metric_reads_the_same_fields_in_memory_and_on_disk(tmp_path, registries):
    plugins.load_file(PLUGINS / "chance_backend.py")
    seen: list[set] = []
    vlmstress.register_metric("fields")(lambda records: seen.append(set(records[0])) or 1.0)
    vlmstress.evaluate("chance", "synth:2", variants="base", judges=[])
    vlmstress.evaluate("chance", "synth:2", variants="base", judges=[], out=tmp_path / "r")
    assert seen[0] == seen[1] and {"answer", "correct", "letter_probs", "target"} <= seen[0]
    assert "response" not in seen[0]  # the summary's fields, not the whole record


# --- augmentation kinds and training sources ---------------------------------------------------------


def test_user_augmentation_and_source_from_python(tmp_path, registries):
    plugins.load_file(PLUGINS / "training_plugins.py")
    data = synth.write(synth.generate(6, seed=2, split="train"), tmp_path / "d")
    samples = load_source("file", data_dir=str(data), n=4, seed=0)
    assert [s.sample_id for s in samples] == [s.sample_id for s in synth.generate(4, seed=2, split="train")]
    for s in samples:
        prompt = augment.augment(s, seed=3, rates={"shuffled_options": 1.0})
        assert prompt.variant == "shuffled_options" and sorted(prompt.options) == sorted(s.options)
        assert prompt.options[ord(prompt.target) - ord("A")] == s.options[ord(s.target) - ord("A")]
    # validated against the registries when the config is: defaults kept, order by registration
    cfg = validated(GRPORunConfig, {"augment": {"shuffled_options": 0.2, "wrong_think": 0.0}})
    assert cfg.augment == {
        "correct_think": 0.1,
        "wrong_think": 0.0,
        "correct_caption": 0.1,
        "wrong_caption": 0.1,
        "shuffled_options": 0.2,
    }
    assert "shuffled_options" not in validated(GRPORunConfig, {}).augment  # rate 0 unless named
    with pytest.raises(UsageError, match="augment: .*sum to at most 1"):
        validated(GRPORunConfig, {"augment": {"shuffled_options": 0.9}})
    with pytest.raises(UsageError, match=r"augment: .*rate of shuffled_options must be in \[0, 1\]"):
        validated(GRPORunConfig, {"augment": {"shuffled_options": -0.1}})
    assert DataSource(source="file", data_dir=str(data)).fields() == {"data_dir": str(data)}
    with pytest.raises(ValueError, match="training source 'file': missing a required argument: 'data_dir'"):
        DataSource(source="file")
    with pytest.raises(
        ValueError, match="training source 'file': got an unexpected keyword argument 'split'"
    ):
        DataSource(source="file", data_dir=str(data), split="val")


def test_a_grpo_config_checks_its_judges_and_dynamics_variants_when_validated(registries):
    with pytest.raises(UsageError, match=r"config: judge: .*unknown judge 'letter' \(known: rule\)"):
        validated(GRPORunConfig, {"judge": "letter"})
    with pytest.raises(UsageError, match=r"config: dynamics.variants: .*unknown variant 'peer_pressure'"):
        validated(GRPORunConfig, {"dynamics": {"variants": ["base", "peer_pressure"]}})
    plugins.load_file(PLUGINS / "letter_judge.py")
    cfg = validated(GRPORunConfig, {"judge": "letter", "dynamics": {"judges": ["rule", "letter"]}})
    assert cfg.judge == "letter" and cfg.dynamics.judges == ["rule", "letter"]
    assert load_judge(cfg.judge).name == "letter"  # what the faithful reward terms are gated by


def test_user_augmentation_and_source_train_from_the_command_line(tmp_path, tiny_ckpt, capsys, registries):
    """A one-step GRPO run whose prompts come from the user source `file`, a third of them (as
    drawn) through the user augmentation kind `shuffled_options`."""
    data = synth.write(synth.generate(6, seed=2, split="train"), tmp_path / "d")
    rates = {
        "shuffled_options": 0.5,
        "correct_think": 0,
        "wrong_think": 0,
        "correct_caption": 0,
        "wrong_caption": 0,
    }
    args = grpo_config(
        tmp_path,
        init=f"tiny:{tiny_ckpt}",
        torch_threads=1,
        data=[{"source": "file", "data_dir": str(data), "n": 6}],
        augment=rates,
        max_steps=1,
        num_generations=2,
        per_device_train_batch_size=2,
        max_completion_length=4,
        save_steps=100,
        report_to="none",
        dynamics={"at_start": False, "eval_every": 100, "n": 2, "variants": ["base"], "max_new_tokens": 4},
    )
    assert main([*args, "--include", str(PLUGINS / "training_plugins.py")]) == 0
    drawn = [augment.choose_variant(s.sample_id, 0, rates) for s in synth.generate(6, seed=2, split="train")]
    counts = {v: drawn.count(v) for v in sorted(set(drawn))}
    assert 0 < counts.get("shuffled_options", 0) < 6  # both kinds occur, so the log line shows a mix
    said = "6 training prompts: " + ", ".join(f"{v} {n}" for v, n in counts.items())
    assert said in capsys.readouterr().out
    assert (tmp_path / "out" / "final" / "model.safetensors").is_file()


# --- installed plugins: the vlmstress.plugins entry-point group ---------------------------------------


def install(site: Path, dist: str, module: str, code: str) -> None:
    """What `pip install` leaves for a package declaring a vlmstress.plugins entry point: its module
    and a dist-info folder with METADATA and entry_points.txt (importlib.metadata reads these)."""
    (site / f"{module}.py").write_text(code)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[vlmstress.plugins]\n{dist} = {module}\n")


PLUGIN = """\
from dataclasses import replace

from vlmstress import register_backend, register_variant
from vlmstress.models.base import Generation
from vlmstress.perturb import build_prompt


@register_variant("from_plugin")
def from_plugin(sample, misleading, template):
    prompt = build_prompt(sample, "from_plugin", template)
    return replace(prompt, user="An installed plugin asks:\\n" + prompt.user)


@register_backend("always_a")
class AlwaysA:
    name = "always_a"

    def generate(self, prompts, *, max_new_tokens):
        return [Generation("<think>A, surely.</think><answer>A</answer>") for _ in prompts]
"""


def run_with(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(SRC)])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def test_an_installed_plugin_registers_before_the_command_line_and_the_api_run(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "vlmstress-peer-plugin", "vlmstress_peer_plugin", PLUGIN)
    out = tmp_path / "run"
    cli = [
        "-m",
        "vlmstress",
        "eval",
        "--model",
        "always_a",
        "--data",
        "synth:3",
        "--variants",
        "base,from_plugin",
    ]
    res = run_with(site, *cli, "--out", str(out))
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted(r["variant"] for r in records) == ["base"] * 3 + ["from_plugin"] * 3
    assert all(r["error"] is None and r["answer"] == "A" for r in records)
    api = (
        "import vlmstress\n"
        "r = vlmstress.evaluate('always_a', 'synth:2', variants='from_plugin', judges=[])\n"
        "print(r.metrics['model'], sorted(r.metrics['variants']), len(r.records))\n"
    )
    res = run_with(site, "-c", api)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "always_a ['from_plugin'] 2"


def test_an_installed_plugin_that_fails_to_import_is_one_line_and_exit_2(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "vlmstress-broken-plugin", "vlmstress_broken_plugin", "raise RuntimeError('needs a GPU')\n")
    out = tmp_path / "run"
    res = run_with(site, "-m", "vlmstress", "eval", "--model", "tiny", "--data", "synth:2", "--out", str(out))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    [line] = res.stderr.strip().splitlines()
    assert line == (
        "vlmstress: error: plugin vlmstress-broken-plugin (vlmstress_broken_plugin of "
        "vlmstress-broken-plugin 0.1, entry point group vlmstress.plugins) failed to load: "
        "RuntimeError: needs a GPU"
    )
    assert not out.exists()


def test_entry_points_are_loaded_once_a_process(monkeypatch, registries):
    calls = []
    monkeypatch.setattr(plugins, "_SCANNED", False)
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: calls.append(group) or [])
    assert plugins.load_entry_points() == [] and plugins.load_entry_points() == []
    assert calls == ["vlmstress.plugins"]

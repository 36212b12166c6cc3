"""The study (`vlmstress demo`) on a tiny budget: every arm trained and evaluated, the table equal to
the evaluations' metrics.json, a rerun that trains nothing again, a rerun of another study refused."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
import yaml

from vlmstress import study
from vlmstress.errors import UsageError
from vlmstress.study import ARMS, StudySettings, run_study

SEEDS = (0,)  # two seeds double the time; the table over seeds is tested on its own below
VARIANTS = ("base", "wrong_think")
STEPS = 2
N = 5


def test_default_config_ships_inside_the_package():
    """An installed (not editable) vlmstress has no configs/ folder: the demo's config is package data,
    and the checkout's configs/grpo-tiny.yaml is that same file."""
    package = Path(study.__file__).resolve().parent
    assert study.DEFAULT_CONFIG.is_file() and study.DEFAULT_CONFIG.is_relative_to(package)
    checkout = package.parents[1] / "configs" / "grpo-tiny.yaml"
    assert checkout.resolve() == study.DEFAULT_CONFIG


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    """configs/grpo-tiny.yaml at test size: a small pool, 2 prompts x 4 completions per step."""
    raw = yaml.safe_load(study.DEFAULT_CONFIG.read_text())
    raw.update(
        data=[{"source": "synth", "n": 16}],
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=32,
        torch_threads=1,
        save_steps=STEPS,
        logging_steps=1,
        # rates of its own, so the augment arms can be seen to take the config's
        augment={"correct_think": 0.1, "wrong_think": 0.2, "correct_caption": 0.1, "wrong_caption": 0.2},
    )
    raw["dynamics"].update(variants=["base"], max_new_tokens=32)
    path = tmp_path_factory.mktemp("config") / "grpo.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def settings(out: Path, config: Path, **overrides) -> StudySettings:
    base = dict(out=out, config=config, seeds=SEEDS, grpo_steps=STEPS, n=N, variants=VARIANTS, dynamics_n=2)
    return StudySettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def done(tmp_path_factory, config_file):
    out = tmp_path_factory.mktemp("study")
    return run_study(settings(out, config_file), log=lambda _: None), out


def runs(out: Path):
    for arm in ARMS:
        for seed in SEEDS:
            yield (
                arm,
                seed,
                out / "train" / arm.name / f"seed-{seed}",
                out / "eval" / f"{arm.name}-seed-{seed}",
            )


def test_every_arm_is_trained_its_way_and_evaluated(done, config_file):
    result, out = done
    configured = yaml.safe_load(config_file.read_text())["augment"]
    for arm, seed, run, evaluation in runs(out):
        assert (run / "final" / "model.safetensors").is_file()
        state = json.loads((run / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
        assert state["global_step"] == STEPS
        steps = {json.loads(line)["step"] for line in (run / "dynamics.jsonl").read_text().splitlines()}
        assert steps == {0, 1, 2}  # eval_every sized to the run: ceil(2 / DYNAMICS_POINTS) = 1
        # The arm's interventions, as the trainer was given them.
        cfg = json.loads((run / "grpo_config.json").read_text())
        assert cfg["seed"] == seed and cfg["max_steps"] == STEPS and cfg["init"] == "tiny"
        assert cfg["data"][0]["n"] == STEPS * 8 // 4  # the pool: steps x prompts per step (8 / G)
        assert cfg["augment"] == (configured if arm.augment else dict.fromkeys(configured, 0.0))
        assert [t["faithful"] for t in cfg["rewards"]] == [arm.faithful] * len(cfg["rewards"])
        # Its final policy evaluated under the study's variants.
        assert json.loads((evaluation / "config.json").read_text())["model"] == f"tiny:{run / 'final'}"
        metrics = json.loads((evaluation / "metrics.json").read_text())
        assert metrics["n_samples"] == N and list(metrics["variants"]) == list(VARIANTS)
        assert len((evaluation / "records.jsonl").read_text().splitlines()) == N * len(VARIANTS)
    sft = json.loads((out / "eval" / "sft" / "metrics.json").read_text())
    assert sft["model"] == "tiny" and sft["n_samples"] == N
    # Every model again on base, its answers sampled at temperature 1 (findings 2s, 6s)
    for name in ["sft"] + [f"{arm.name}-seed-{seed}" for arm, seed, _, _ in runs(out)]:
        sampled = out / study.SAMPLED / name
        config = json.loads((sampled / "config.json").read_text())
        assert config["model_options"] == study.SAMPLING and config["variants"] == ["base"]
        assert len((sampled / "records.jsonl").read_text().splitlines()) == N
    assert "sampled base consistency %" in result.table
    assert [e.label for e in result.evaluations] == ["sft"] + [a.name for s in SEEDS for a in ARMS]
    html = result.report.read_text()
    assert result.report == out / "report.html" and "Training dynamics" in html


def _tables(text: str) -> str:
    """study.md above its Findings section: the comparison tables."""
    return text.split("\n## Findings")[0]


def _table(text: str) -> dict[str, list[str]]:
    """The first Markdown table of study.md: row label -> cells (label column excluded)."""
    rows = {}
    for line in _tables(text).split("\n\n| arm |")[0].splitlines():
        if line.startswith("| ") and not line.startswith("| model"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _numbers(cell: str) -> tuple[float, float]:
    mean, _, spread = cell.partition(" ± ")
    return float(mean), float(spread or 0)


def test_table_rows_are_the_arms_metrics(done):
    result, out = done
    text = (out / "study.md").read_text()
    assert text == result.table
    rows = _table(text)
    assert list(rows) == ["sft"] + [a.name for a in ARMS]
    header = [c.strip() for c in text.split("| model |")[1].splitlines()[0].strip("|").split("|")]
    # header[0] is "seeds"; then per variant accuracy, base cons.-adj., base entropy, followed wrong_think
    expected = [(f"{v} acc %", v, "accuracy", 100) for v in VARIANTS] + [
        ("base cons.-adj. acc %", "base", "consistency_adjusted_accuracy", 100),
        ("base entropy (nats)", "base", "mean_entropy", 1),
        ("followed wrong_think %", "wrong_think", "followed_misleading", 100),
    ]
    assert header == ["seeds"] + [e[0] for e in expected]

    def metrics_of(label):
        dirs = (
            [out / "eval" / "sft"] if label == "sft" else [out / "eval" / f"{label}-seed-{s}" for s in SEEDS]
        )
        return [json.loads((d / "metrics.json").read_text()) for d in dirs]

    for label, cells in rows.items():
        assert cells[0] == ("–" if label == "sft" else ",".join(map(str, SEEDS)))
        for cell, (_, variant, key, scale) in zip(cells[1:], expected, strict=True):
            values = [scale * m["variants"][variant][key] for m in metrics_of(label)]
            mean, spread = _numbers(cell)
            tol = 0.051 if scale == 100 else 0.00051  # one decimal for percentages, three for nats
            assert mean == pytest.approx(statistics.fmean(values), abs=tol), (label, variant, key)
            assert spread == pytest.approx((max(values) - min(values)) / 2, abs=tol), (label, variant, key)
            assert (" ± " in cell) == (len(values) > 1)

    # Below the table: each arm's base accuracy per seed, with its difference from the SFT model.
    sft_base = 100 * metrics_of("sft")[0]["variants"]["base"]["accuracy"]
    per_seed = [line for line in _tables(text).split("| arm |")[1].split("\n\n")[0].splitlines()[2:] if line]
    assert [line.split("|")[1].strip() for line in per_seed] == [a.name for a in ARMS]
    for line, arm in zip(per_seed, ARMS, strict=True):
        for cell, m in zip(line.strip("|").split("|")[1:], metrics_of(arm.name), strict=True):
            acc, delta = map(float, re.fullmatch(r"\s*([\d.]+) \(([+-][\d.]+)\)\s*", cell).groups())
            assert acc == pytest.approx(100 * m["variants"]["base"]["accuracy"], abs=0.051)
            assert delta == pytest.approx(acc - sft_base, abs=0.11)

    # Last: the sampled evaluations' base accuracy and consistency, from their own metrics.json
    sampled = _tables(text).split("| sampled base acc % | sampled base consistency % |")[1].splitlines()[2:]
    assert [line.split("|")[1].strip() for line in sampled if line] == ["sft"] + [a.name for a in ARMS]
    for line in filter(None, sampled):
        label, _, acc, cons = (c.strip() for c in line.strip("|").split("|"))
        names = ["sft"] if label == "sft" else [f"{label}-seed-{s}" for s in SEEDS]
        metrics = [json.loads((out / study.SAMPLED / n / "metrics.json").read_text()) for n in names]
        accuracy = statistics.fmean(100 * m["variants"]["base"]["accuracy"] for m in metrics)
        assert _numbers(acc)[0] == pytest.approx(accuracy, abs=0.051)
        shares = [study.consistency_share(m) for m in metrics]
        if None in shares:
            assert cons == "–"
        else:
            assert _numbers(cons)[0] == pytest.approx(100 * statistics.fmean(shares), abs=0.051)


def test_findings_section_has_a_row_per_finding_with_p_or_a_null_reason(done):
    """study.md's Findings: at least the six findings of the paper (and the misleading drops), each
    with a p-value, or null and an 'inconclusive (why)'; findings.json and the report's top say the same."""
    result, out = done
    text = (out / "study.md").read_text()
    section = text.split("\n## Findings\n")[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    saved = json.loads((out / study.FINDINGS).read_text())
    assert len(rows) == len(saved["findings"]) >= 6
    keys = [r.strip("|").split("|")[0].strip() for r in rows]
    assert {"1", "2", "3", "4a", "4b", "5a", "5b", "6a", "7a", "7b"} <= set(keys)
    for row, f in zip(rows, saved["findings"], strict=True):
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 7 and cells[0] == f["key"]
        p, verdict = cells[5], cells[6]
        assert verdict.split("**")[1] in ("reproduced", "not reproduced", "inconclusive")
        if p == "null":
            assert f["p_value"] is None
            assert re.fullmatch(r"\*\*inconclusive\*\* \(.+\)", verdict), verdict
        else:
            assert 0 <= float(p) <= 1 and f["p_value"] == pytest.approx(float(p), rel=0.05, abs=5e-4)
    # This study's variants are base and wrong_think: the wrong_caption findings cannot be tested.
    by_key = {f["key"]: f for f in saved["findings"]}
    assert by_key["4a"]["p_value"] is None and "wrong_caption not evaluated" in by_key["4a"]["reason"]
    assert by_key["7a"]["p_value"] is not None and by_key["7a"]["n"] == N
    # The HTML report shows the same rows, above the runs table.
    html = result.report.read_text()
    assert html.index('id="findings"') < html.index('id="runs"')
    for f in saved["findings"]:
        assert f'data-finding="{f["key"]}" data-verdict="{f["verdict"]}"' in html
    # Beside the table, inside the section, a plot of the dynamics each trend finding read (3: the
    # plain arm's entropy over its steps; 6b, 6c: the augment+faithful arm's).
    section = html[html.index('id="findings"') : html.index("</section>", html.index('id="findings"'))]
    figure = r'data-finding-figure="(\w+)"><img class="plot" src="data:image/png;base64,'
    plotted = re.findall(figure, section)
    assert plotted == [f["key"] for f in saved["findings"] if f["series"] and f["series"]["points"]]
    assert {"3", "6b", "6c"} <= set(plotted)
    # and the sampled evaluations 2s and 6s read, one row per model, the cells study.md has
    table = text.split("| sampled base acc % | sampled base consistency % |")[1].split("\n\n")[0]
    md_rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:] if line]
    assert [
        [r["model"], r["seeds"], r["accuracy"], r["consistency"]] for r in saved["sampled"]["rows"]
    ] == md_rows
    for model, seeds, acc, cons in md_rows:
        assert (
            f'<tr data-sampled="{model}"><td>{model}</td><td>{seeds}</td><td>{acc}</td><td>{cons}</td></tr>'
            in section
        )


def test_a_report_that_is_not_a_studys_has_no_findings(done, tmp_path):
    from vlmstress.report import build_report

    _, out = done
    html = build_report([out / "eval" / "sft"], tmp_path / "r.html").read_text()
    assert 'id="findings"' not in html


@pytest.fixture
def no_report(monkeypatch):
    """The HTML report (matplotlib) is most of a rerun's time, and the first run's test covers it."""
    monkeypatch.setattr("vlmstress.report.build_report", lambda runs, html, findings=None, **_: html)


def test_rerun_resumes_without_training_or_evaluating_again(done, config_file, monkeypatch, no_report):
    result, out = done
    kept = [
        p for _, _, run, ev in runs(out) for p in (run / "final" / "model.safetensors", ev / "records.jsonl")
    ]
    kept += [run / "dynamics.jsonl" for _, _, run, _ in runs(out)] + [out / "eval" / "sft" / "records.jsonl"]
    kept += list((out / study.SAMPLED).glob("*/records.jsonl"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished arm was trained again")

    monkeypatch.setattr("vlmstress.train.grpo.train_grpo", no_training)
    again = run_study(settings(out, config_file), log=lambda _: None)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept} == before
    assert again.table == result.table


def test_an_unfinished_arm_is_trained_on_rerun(done, config_file, monkeypatch, no_report):
    """Without its `trained.json` a run counts as unfinished; the study hands it to train_grpo again
    (which resumes from the run's last checkpoint, tests/test_grpo.py)."""
    _, out = done
    seed = SEEDS[-1]
    marker = out / "train" / "faithful" / f"seed-{seed}" / study.DONE
    text = marker.read_text()
    marker.unlink()
    calls = []

    def train(cfg, seed, run, sft_weights, log):
        calls.append((seed, run, cfg.max_steps, cfg.augment["wrong_think"], cfg.rewards[0].faithful))
        marker.write_text(text)

    monkeypatch.setattr(study, "_train", train)
    run_study(settings(out, config_file), log=lambda _: None)
    assert calls == [(seed, out / "train" / "faithful" / f"seed-{seed}", STEPS, 0.0, True)]


def test_a_rerun_with_other_settings_is_refused(done, config_file):
    _, out = done
    with pytest.raises(UsageError, match="config.max_steps"):
        run_study(settings(out, config_file, grpo_steps=STEPS + 1), log=lambda _: None)
    with pytest.raises(UsageError, match=r"different n\b"):
        run_study(settings(out, config_file, n=N + 1), log=lambda _: None)


def test_a_study_on_other_sft_weights_is_refused(tmp_path, tiny_ckpt, config_file, no_report):
    """Same settings, but the SFT checkpoint's weights changed (as when new tiny weights ship)."""
    import shutil

    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    one = settings(tmp_path / "s", config_file, model=f"tiny:{ckpt}", train=False, n=2, variants=("base",))
    run_study(one, log=lambda _: None)
    weights = load_file(ckpt / "model.safetensors")
    save_file({k: v + 1 if k.endswith("bias") else v for k, v in weights.items()}, ckpt / "model.safetensors")
    with pytest.raises(UsageError, match="model_weights"):
        run_study(one, log=lambda _: None)


def test_no_train_evaluates_the_sft_model_only(tmp_path, config_file, no_report):
    result = run_study(settings(tmp_path / "s", config_file, train=False), log=lambda _: None)
    assert list(_table(result.table)) == ["sft"]
    assert not (tmp_path / "s" / "train").exists() and "| arm |" not in result.table


def test_arm_config_switches_only_augmentation_and_reward_gating(config_file):
    base = study.base_config(settings(Path("unused"), config_file))
    configs = {arm.name: study.arm_config(base, arm) for arm in ARMS}
    for arm in ARMS:
        cfg = configs[arm.name]
        rates = cfg.augment
        assert (rates == base.augment) if arm.augment else not any(rates.values())
        assert all(t.faithful == arm.faithful for t in cfg.rewards)
        assert [(t.fn, t.weight) for t in cfg.rewards] == [(t.fn, t.weight) for t in base.rewards]
        same = cfg.model_dump(exclude={"augment", "rewards"}) == base.model_dump(
            exclude={"augment", "rewards"}
        )
        assert same, arm.name
    assert len({json.dumps(c.model_dump(), sort_keys=True) for c in configs.values()}) == len(ARMS)


def test_augment_arms_of_a_config_without_augmentation_take_the_study_rates(config_file, tmp_path):
    raw = yaml.safe_load(config_file.read_text())
    raw["augment"] = dict.fromkeys(raw["augment"], 0.0)  # as the shipped grpo-tiny.yaml
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(raw))
    base = study.base_config(settings(Path("unused"), path))
    for arm in ARMS:
        rates = study.arm_config(base, arm).augment
        assert rates == (study.ARM_AUGMENT if arm.augment else dict.fromkeys(rates, 0.0))
    # the paper's four kinds, the misleading ones raised; a config's own rates are kept as they are
    assert study.ARM_AUGMENT == {
        "correct_think": 0.1,
        "wrong_think": 0.3,
        "correct_caption": 0.1,
        "wrong_caption": 0.2,
    }
    raw["augment"] = {"wrong_caption": 0.5}
    path.write_text(yaml.safe_dump(raw))
    own = study.base_config(settings(Path("unused"), path))
    assert study.arm_config(own, ARMS[1]).augment == own.augment and own.augment["wrong_caption"] == 0.5


def _metrics(base: float, entropy: float | None, followed: float) -> dict:
    return {
        "variants": {
            "base": {"accuracy": base, "consistency_adjusted_accuracy": base / 2, "mean_entropy": entropy},
            "wrong_think": {"accuracy": 1 - followed, "followed_misleading": followed},
        }
    }


def test_table_over_seeds_is_mean_and_half_range(tmp_path):
    E = study.Evaluation
    evaluations = [
        E("sft", None, tmp_path, _metrics(0.45, 0.9, 0.8)),
        E("plain", 0, tmp_path, _metrics(0.40, 0.5, 0.9)),
        E("plain", 1, tmp_path, _metrics(0.50, 0.7, 0.7)),
        E("augment", 1, tmp_path, _metrics(0.52, None, 0.6)),  # seed 0 not trained (a --no-train run)
    ]
    text = study.study_markdown(evaluations, VARIANTS, settings(tmp_path, tmp_path, seeds=(0, 1)))
    rows = _table(text)
    assert rows["sft"] == ["–", "45.0", "20.0", "22.5", "0.900", "80.0"]
    assert rows["plain"] == ["0,1", "45.0 ± 5.0", "20.0 ± 10.0", "22.5 ± 2.5", "0.600 ± 0.100", "80.0 ± 10.0"]
    assert rows["augment"] == ["1", "52.0", "40.0", "26.0", "–", "60.0"]
    per_seed = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in _tables(text).split("| arm |")[1].splitlines()[2:]
    ]
    assert per_seed == [["plain", "40.0 (-5.0)", "50.0 (+5.0)"], ["augment", "–", "52.0 (+7.0)"]]


def test_shipped_arms_are_used_only_where_the_study_would_train_exactly_them(
    done, config_file, tmp_path, monkeypatch, no_report
):
    """A trained study's arms, shipped (float16 weights), are installed by a new study with the same
    SFT weights and config instead of training; study.md says so. Another step count, or --retrain,
    trains instead."""
    import shutil

    import torch
    from safetensors.torch import load_file

    _, trained = done
    shipped = tmp_path / "shipped"
    written = study.ship_arms(trained, shipped)
    assert len(written) == len(ARMS) * len(SEEDS)
    for folder in written:
        assert {v.dtype for v in load_file(folder / "final" / "model.safetensors").values()} == {
            torch.float16
        }

    def no_training(*args, **kwargs):
        raise AssertionError("a shipped arm was trained")

    monkeypatch.setattr(study, "_train", no_training)
    result = run_study(settings(tmp_path / "s", config_file, shipped=shipped), log=lambda _: None)
    assert "the arms are the shipped checkpoints" in result.table
    for arm, seed, run, _ in runs(tmp_path / "s"):
        made = json.loads((run / study.DONE).read_text())
        assert made["source"] == "shipped" and made["seed"] == seed
        original = load_file(trained / "train" / arm.name / f"seed-{seed}" / "final" / "model.safetensors")
        installed = load_file(run / "final" / "model.safetensors")
        assert original.keys() == installed.keys()
        for k, v in installed.items():  # float32 again, as trained up to float16 rounding
            assert v.dtype == torch.float32 and torch.equal(v, original[k].half().float())
        original_dynamics = trained / "train" / arm.name / f"seed-{seed}" / "dynamics.jsonl"
        assert (run / "dynamics.jsonl").read_bytes() == original_dynamics.read_bytes()
    assert [e.origin for e in result.evaluations[1:]] == ["shipped"] * len(ARMS) * len(SEEDS)
    with pytest.raises(UsageError, match="nothing to ship"):  # installed arms are not shipped again
        study.ship_arms(tmp_path / "s", tmp_path / "again")

    calls = []

    def train(cfg, seed, run, sft_weights, log):  # stands in for GRPO: the trained arm's policy
        calls.append(run)
        shutil.copytree(trained / "train" / run.parent.name / run.name / "final", run / "final")

    monkeypatch.setattr(study, "_train", train)
    for out, extra in (("steps", {"grpo_steps": STEPS + 1}), ("retrain", {"retrain": True})):
        calls.clear()
        run_study(settings(tmp_path / out, config_file, shipped=shipped, **extra), log=lambda _: None)
        assert len(calls) == len(ARMS) * len(SEEDS), out


def test_shipped_arms_of_other_sft_weights_are_not_used(done, tmp_path, tiny_ckpt, config_file):
    import shutil

    from safetensors.torch import load_file, save_file

    _, trained = done
    shipped = tmp_path / "shipped"
    study.ship_arms(trained, shipped)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    weights = load_file(ckpt / "model.safetensors")
    save_file({k: v + 1 if k.endswith("bias") else v for k, v in weights.items()}, ckpt / "model.safetensors")
    base = study.base_config(settings(tmp_path, config_file))
    cfg = study.arm_config(base, ARMS[0])
    digest = study.weights_digest("tiny")
    assert study.shipped_arm(shipped, ARMS[0].name, cfg, SEEDS[0], digest) is not None
    assert (
        study.shipped_arm(shipped, ARMS[0].name, cfg, SEEDS[0], study.weights_digest(f"tiny:{ckpt}")) is None
    )
    assert study.shipped_arm(shipped, ARMS[0].name, cfg, SEEDS[0] + 7, digest) is None
    other = cfg.model_copy(update={"learning_rate": cfg.learning_rate * 2})
    assert study.shipped_arm(shipped, ARMS[0].name, other, SEEDS[0], digest) is None


def test_retrain_and_no_train_together_are_one_usage_line(capsys):
    from vlmstress.cli import main

    assert main(["demo", "--retrain", "--no-train", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--retrain" in err[0] and "--no-train" in err[0]


def test_the_default_study_uses_the_shipped_arms():
    """The package ships every arm and seed of the default study, trained from the shipped SFT weights
    with the default settings, so a default `vlmstress demo` evaluates them instead of training for
    hours. A change to the defaults, configs/grpo-tiny.yaml, GRPORunConfig's fields or the SFT weights
    fails here: retrain (`vlmstress demo --retrain`) and re-ship (scripts/ship_arms.py)."""
    import torch
    from safetensors.torch import load_file

    base = study.base_config(StudySettings(out=Path("unused")))
    digest = study.weights_digest("tiny")
    for seed in study.DEFAULT_SEEDS:
        for arm in ARMS:
            cfg = study.arm_config(base, arm)
            folder = study.shipped_arm(study.SHIPPED_ARMS, arm.name, cfg, seed, digest)
            assert folder is not None, f"no shipped {arm.name} arm for seed {seed} matches the default study"
            weights = load_file(folder / "final" / "model.safetensors")
            assert {v.dtype for v in weights.values()} == {torch.float16}
            rows = (folder / "dynamics.jsonl").read_text().splitlines()
            steps, every = study.DEFAULT_GRPO_STEPS, study.DEFAULT_GRPO_STEPS // study.DYNAMICS_POINTS
            assert {json.loads(line)["step"] for line in rows} == set(range(0, steps + 1, every))


def test_consistency_share_is_over_judged_answers_only():
    quadrants = {
        "consistent_correct": 0.5,
        "consistent_incorrect": 0.2,
        "inconsistent_correct": 0.1,
        "inconsistent_incorrect": 0.1,
        "unknown": 0.1,
    }
    share = study.consistency_share({"variants": {"base": {"quadrants": quadrants}}})
    assert share == pytest.approx(0.7 / 0.9)
    unjudged = dict.fromkeys(quadrants, 0.0) | {"unknown": 1.0}
    assert study.consistency_share({"variants": {"base": {"quadrants": unjudged}}}) is None
    assert study.consistency_share({"variants": {"base": {"quadrants": None}}}) is None

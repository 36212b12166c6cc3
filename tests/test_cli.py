import itertools
import json
import re
import subprocess
import sys

import pytest

from vlmstress.cli import main


def _run(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "vlmstress.cli", *args], capture_output=True, text=True, **kw
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["eval", "--model", "nosuch:x", "--data", "synth:2"], "model SPEC"),
        (["eval", "--model", "tiny", "--data", "nosuch-benchmark"], "nosuch-benchmark"),
        (["eval", "--model", "tiny", "--data", "synth:2", "--variants", "base,bogus"], "unknown variant"),
        (["eval", "--model", "tiny", "--data", "synth:2", "--limit", "0"], "positive"),
        (["eval", "--model", "tiny"], "--data"),
        (["frobnicate"], "invalid choice"),
        (["train", "sft", "--config", "/nonexistent.yaml"], "not found"),
        (["demo", "--seeds", "0,0", "--out", "/nonexistent/demo"], "distinct seeds"),
        (["demo", "--model", "replay:x.jsonl", "--out", "/nonexistent/demo"], "demo --model"),
        (["demo", "--config", "/nonexistent.yaml", "--out", "/nonexistent/demo"], "not found"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args, needle):
    res = _run(*args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_python_m_vlmstress_is_the_command_line():
    res = subprocess.run([sys.executable, "-m", "vlmstress", "--help"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "eval" in res.stdout and "report" in res.stdout
    res = subprocess.run([sys.executable, "-m", "vlmstress", "eval"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--model" in res.stderr


def test_config_with_unknown_key_is_usage_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kind: sft\nmax_stepz: 3\ncurriculum: []\n")
    assert main(["train", "sft", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "max_stepz" in err and len(err.splitlines()) == 1


def test_data_synth_writes_a_loadable_file(tmp_path):
    from vlmstress.data.files import load_file

    assert main(["data", "synth", "--n", "5", "--seed", "3", "--out", str(tmp_path / "d")]) == 0
    samples = load_file(tmp_path / "d" / "data.jsonl")
    assert len(samples) == 5 and all(s.error is None for s in samples)
    assert samples[0].options and samples[0].target in "ABCD"


def test_eval_end_to_end_on_tiny_checkpoint(tiny_ckpt, tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "eval",
            "--model",
            f"tiny:{tiny_ckpt}",
            "--data",
            "synth:5",
            "--variants",
            "all",
            "--max-new-tokens",
            "8",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 5 and len(metrics["variants"]) == 9
    records = (out / "records.jsonl").read_text().splitlines()
    assert len(records) == 45
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == f"tiny:{tiny_ckpt}" and config["variants"][0] == "base"


def test_demo_no_train_prints_the_study_table(tmp_path, capsys):
    """`demo --no-train` on a fresh folder: nothing is trained; the SFT model and the GRPO arms the
    package ships (the default study's) are evaluated under all 9 variants; study.md says the arms
    are the shipped checkpoints; the report is written."""
    from vlmstress.study import ARMS, DEFAULT_SEEDS

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n", "3", "--no-train"]) == 0
    printed = capsys.readouterr().out
    table = (out / "study.md").read_text()
    assert table in printed and f"HTML report: {out / 'report.html'}" in printed
    assert "the arms are the shipped checkpoints" in table
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))  # the first table
    assert rows[0].startswith("| model | seeds | base acc % |") and len(rows) == 3 + len(ARMS)
    assert "## Findings" in table
    assert rows[2].startswith("| sft | – |") and len(rows[2].split("|")) == len(rows[0].split("|"))
    seeds = ",".join(map(str, DEFAULT_SEEDS))
    assert [r.split("|")[1:3] for r in rows[3:]] == [[f" {a.name} ", f" {seeds} "] for a in ARMS]
    metrics = json.loads((out / "eval" / "sft" / "metrics.json").read_text())
    assert metrics["model"] == "tiny" and metrics["n_samples"] == 3 and len(metrics["variants"]) == 9
    assert (out / "report.html").is_file()
    for arm in ARMS:
        for seed in DEFAULT_SEEDS:
            run = out / "train" / arm.name / f"seed-{seed}"
            assert json.loads((run / "trained.json").read_text())["source"] == "shipped"
            assert not list(run.glob("checkpoint-*"))  # installed, not trained
            assert f"GRPO arm {arm.name}, seed {seed}: the shipped checkpoint" in printed
    assert f"evaluating tiny on synth:3 (9 variants) -> {out / 'eval' / 'sft'}" in printed
    assert re.search(r"^total time \d+:\d\d$", printed.splitlines()[-1])
    # a rerun names the runs it reuses instead of evaluating them again
    assert main(["demo", "--out", str(out), "--n", "3", "--no-train"]) == 0
    again = capsys.readouterr().out
    assert f"reusing {out / 'eval' / 'sft'}: all 27 records of tiny already done" in again
    assert "reusing GRPO arm plain, seed 0: the shipped checkpoint" in again
    assert "evaluating" not in again and again.splitlines()[-1].startswith("total time ")


def test_eval_says_when_calls_failed_and_retries_them_when_asked(tmp_path, capsys):
    """Responses made elsewhere, one missing (a failed call to the replay 'model'): the summary says
    so; once the response is there, `--retry-failed` fetches it and only it."""
    from vlmstress.data import synth
    from vlmstress.runlog import read_records

    rows = [
        {"sample_id": s.sample_id, "variant": "base", "response": f"<answer>{s.target}</answer>"}
        for s in synth.generate(3)
    ]
    replay, out = tmp_path / "replay.jsonl", tmp_path / "run"
    replay.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    args = [
        "eval",
        "--model",
        f"replay:{replay}",
        "--data",
        "synth:3",
        "--variants",
        "base",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "1 model call(s) failed" in capsys.readouterr().out
    replay.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(args) == 0  # a plain rerun keeps the failure
    assert "1 model call(s) failed" in capsys.readouterr().out
    assert main([*args, "--retry-failed"]) == 0
    assert "failed" not in capsys.readouterr().out
    records = read_records(out / "records.jsonl")
    assert len(records) == 3 and all(r["error"] is None and r["correct"] for r in records)


def test_eval_rerun_says_how_much_it_resumed_and_report_names_its_files(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["eval", "--model", "tiny", "--data", "synth:2", "--out", str(out)]
    assert main([*args, "--variants", "base"]) == 0
    assert "resumed:" not in capsys.readouterr().out  # a fresh run resumes nothing
    assert main([*args, "--variants", "base,stop_think"]) == 0
    assert "resumed: 2 of 4 records already done" in capsys.readouterr().out.splitlines()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    html = out / "report.html"
    assert printed == f"report written to {html}, {out / 'report.md'} and {out / 'report.tex'}"
    assert all(p.is_file() for p in (html, out / "report.md", out / "report.tex"))


def test_every_option_has_help_and_eval_help_lists_the_variants(capsys):
    import argparse

    from vlmstress.cli import build_parser
    from vlmstress.perturb import VARIANTS

    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == {"demo", "eval", "train", "report", "data"}
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if not action.help
    ]
    assert missing == []
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert all(name in text for name in VARIANTS) and "wrong_caption_hedge" in text

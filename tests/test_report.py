"""The HTML/Markdown/LaTeX report, built from real small runs (replayed responses over synth samples).

Two runs on the same samples, so the run-against-run comparison appears; run A also has training
dynamics and one response carrying HTML that must reach the page as text.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import random
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from scipy.stats import binomtest

from vlmstress.cli import build_parser, main
from vlmstress.data import synth
from vlmstress.data.files import load_file
from vlmstress.data.schema import Sample
from vlmstress.errors import UsageError
from vlmstress.judge.rule import RuleJudge
from vlmstress.models.replay import ReplayModel
from vlmstress.perturb import perturb, resolve_variants
from vlmstress.report import build_report, plots
from vlmstress.report.browser import MAX_ATTEMPTS, MAX_SAMPLES, MIN_SAMPLES, THUMB, shown_ids, thumbnail
from vlmstress.report.build import resolve_reference
from vlmstress.report.palette import variant_colours
from vlmstress.report.runs import Run, load_runs, policy_name, short_model
from vlmstress.report.stats import dynamics_series, mcnemar, reliability, roc
from vlmstress.report.tables import comparison_table
from vlmstress.runlog import read_records
from vlmstress.runner import RunSpec, run_eval

VARIANTS = ["base", "wrong_think", "wrong_think_hedge", "wrong_caption", "correct_think", "abstain"]
N = 12
XSS = "<script>alert(1)</script> and <img src=x onerror=alert(1)>"


def replay_rows(
    samples, variants, *, skill: float, gullible: float, seed: int, with_probs: bool
) -> list[dict]:
    """Saved responses of a made-up model: right with probability `skill`, taken in by a misleading
    prefill or caption with probability `gullible`, and reasoning that sometimes argues for another
    option (so every consistency quadrant occurs)."""
    rng = random.Random(seed)
    rows = []
    for s in samples:
        for v in variants:
            p = perturb(s, v, 0)
            letters = p.option_letters
            if p.misleading and rng.random() < gullible:
                answer = p.misleading
            elif rng.random() < skill:
                answer = p.target
            else:
                answer = rng.choice([x for x in letters if x != p.target])
            consistent = answer in s.option_letters and rng.random() < 0.75
            argued = answer if consistent else rng.choice(s.option_letters)
            think = synth.think_text(s, argued)
            if "</think>" in p.prefill:
                text = f"<answer>{answer}</answer>"
            elif p.prefill:
                text = f" actually {think}</think><answer>{answer}</answer>"
            else:
                text = f"<think>{think}</think><answer>{answer}</answer>"
            row = {"sample_id": s.sample_id, "variant": v, "response": text}
            if with_probs:
                conf = 0.3 + 0.65 * rng.random()
                row["letter_probs"] = {x: (1 - conf) / (len(letters) - 1) for x in letters} | {answer: conf}
            rows.append(row)
    return rows


def make_run(root: Path, name: str, rows: list[dict], samples) -> Path:
    replay = root / f"{name}.jsonl"
    replay.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / name
    spec = RunSpec(model=f"replay:{replay}", data=f"synth:{N}", variants=VARIANTS)
    run_eval(ReplayModel(replay), samples, spec, out, judges=[RuleJudge()], progress=False)
    return out


def dynamics_rows() -> list[dict]:
    rows = []
    for seed in (0, 1, 2):
        for step in (0, 50, 100):
            for variant in ("base", "wrong_think"):
                acc = 0.3 + 0.003 * step + 0.02 * seed - (0.1 if variant == "wrong_think" else 0)
                rows.append(
                    {
                        "step": step,
                        "seed": seed,
                        "variant": variant,
                        "accuracy": acc,
                        "consistency_adjusted_accuracy": acc - 0.1,
                        "mean_entropy": 1.2 - 0.005 * step,
                        "mean_p_correct": acc,
                        "mean_completion_tokens": 60 - 0.2 * step,
                        "reward": acc,
                    }
                )
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report")
    samples = synth.generate(N)
    rows_a = replay_rows(samples, VARIANTS, skill=0.9, gullible=0.5, seed=1, with_probs=True)
    rows_a[0]["response"] = f"<think>{XSS}</think><answer>A</answer>"  # sample 0, base
    rows_b = replay_rows(samples, VARIANTS, skill=0.4, gullible=0.2, seed=2, with_probs=False)
    rows_b = [r for r in rows_b if (r["sample_id"], r["variant"]) != (samples[1].sample_id, "wrong_caption")]
    a, b = make_run(root, "run-a", rows_a, samples), make_run(root, "run-b", rows_b, samples)
    (a / "dynamics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dynamics_rows()))
    html = build_report([a, b], root / "out" / "report.html")
    return {"a": a, "b": b, "dirs": [a, b], "html": html, "text": html.read_text()}


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# --- reading the page -----------------------------------------------------------------------------


class Cells(HTMLParser):
    """Every table cell that carries a data-source, with its shown text."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict] = []
        self._open: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "td" and "data-source" in a:
            self._open = {**a, "text": "", "notes": ""}
        elif tag == "span" and self._open is not None and a.get("class") == "note":
            self._open["in_note"] = True

    def handle_data(self, data):
        if self._open is not None:
            self._open["notes" if self._open.get("in_note") else "text"] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._open is not None:
            self.cells.append(self._open)
            self._open = None


def cells(html: str) -> list[dict]:
    parser = Cells()
    parser.feed(html)
    return parser.cells


def number(text: str) -> float:
    return float(text.strip().replace("\u2212", "-"))


PERCENT = {"accuracy", "consistency_adjusted_accuracy", "followed_misleading", "flip_rate", "unparsed_rate"}


def shown_equals(text: str, value: float | None, source: str) -> bool:
    """Does the shown text say `value`, up to the rounding of its last digit?"""
    text = text.strip()
    if value is None:
        return text == "\u2013"
    if text == "\u2013":
        return False
    leaf = source.split(".")[-1]
    scale = 100 if leaf in PERCENT or source.startswith(("quadrants.", "families.")) else 1
    decimals = len(text.split(".")[1]) if "." in text else 0
    return math.isclose(number(text), scale * value, abs_tol=0.5 * 10**-decimals + 1e-9)


# --- tables ------------------------------------------------------------------------------------------


def test_every_table_number_equals_metrics_json(runs):
    shown = cells(runs["text"])
    metrics = [metrics_of(d) for d in runs["dirs"]]
    checked = nulls = 0
    for c in shown:
        source = c["data-source"]
        if source.startswith("derived") or not c["data-run"]:
            continue
        m = metrics[int(c["data-run"])]
        if source.startswith("families."):
            _, fam, leaf = source.split(".")
            value = m["families"].get(c["data-variant"], {}).get(fam, {}).get(leaf)
        else:
            value = m["variants"][c["data-variant"]]
            for part in source.split("."):
                value = value[part]
        assert shown_equals(c["text"], value, source), (c, value)
        if source == "accuracy":
            lo, hi = c["notes"].strip("[]").split(", ")
            ci = m["variants"][c["data-variant"]]["accuracy_ci"]
            assert shown_equals(lo, ci[0], "accuracy") and shown_equals(hi, ci[1], "accuracy")
        checked += 1
        nulls += value is None
    # every variant metric of the contract is in some table, for both runs
    sources = {(c["data-run"], c["data-variant"], c["data-source"]) for c in shown}
    for i, m in enumerate(metrics):
        for variant, vm in m["variants"].items():
            for key in (
                "accuracy",
                "consistency_adjusted_accuracy",
                "mean_entropy",
                "mean_p_correct",
                "ece",
                "brier",
                "followed_misleading",
                "flip_rate",
                "unparsed_rate",
                "errors",
                "n",
            ):
                assert (str(i), variant, key) in sources, (i, variant, key)
            for q in vm["quadrants"]:
                assert (str(i), variant, f"quadrants.{q}") in sources
            if variant != "base":
                assert (str(i), variant, "auroc_p_base") in sources
                assert (str(i), variant, "auroc_neg_entropy") in sources
    assert checked > 200 and nulls > 10  # run B has no letter probabilities: its confidence metrics are null


def test_drop_against_base_with_mcnemar(runs):
    m = metrics_of(runs["a"])
    records = read_records(runs["a"] / "records.jsonl")
    drop = [
        c for c in cells(runs["text"]) if c["data-source"] == "derived:accuracy-base" and c["data-run"] == "0"
    ]
    assert {c["data-variant"] for c in drop} == set(VARIANTS) - {"base"}
    for c in drop:
        v = c["data-variant"]
        expected = m["variants"][v]["accuracy"] - m["variants"]["base"]["accuracy"]
        assert shown_equals(c["text"], expected, "accuracy")
        base = {r["sample_id"]: r["correct"] for r in records if r["variant"] == "base"}
        var = {r["sample_id"]: r["correct"] for r in records if r["variant"] == v}
        b = sum(base[s] and not var[s] for s in base)
        w = sum(var[s] and not base[s] for s in base)
        p = binomtest(b, b + w).pvalue if b + w else 1.0
        assert c["notes"] == ("p<0.001" if p < 0.001 else f"p={p:.3f}")
        assert f"right only under base: {b}" in c["title"]


def test_run_against_run_comparison(runs):
    comp = [c for c in cells(runs["text"]) if c["data-source"] == "derived:accuracy-diff"]
    assert len(comp) == len(VARIANTS)
    ma, mb = metrics_of(runs["a"]), metrics_of(runs["b"])
    for c in comp:
        v = c["data-variant"]
        diff = mb["variants"][v]["accuracy"] - ma["variants"][v]["accuracy"]
        assert shown_equals(c["text"], diff, "accuracy")
        assert c["notes"].startswith("p")
    assert "Run against run" in runs["text"]


def test_markdown_and_latex_tables(runs):
    md = runs["html"].with_suffix(".md").read_text()
    tex = runs["html"].with_suffix(".tex").read_text()
    for d in runs["dirs"]:
        for vm in metrics_of(d)["variants"].values():
            lo, hi = vm["accuracy_ci"]
            assert f"{100 * vm['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" in md
    assert "| replay:run-a |" in md and "\u2013" in md
    # LaTeX: specials escaped (model names and variants are full of underscores), tables balanced
    assert r"wrong\_think" in tex and r"replay:run-a" in tex
    body = [ln for ln in tex.splitlines() if not ln.startswith("%")]
    assert not any(re.search(r"(?<!\\)_", ln) for ln in body)
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") >= 8


# --- safety and self-containment ----------------------------------------------------------------


def test_model_text_is_escaped(runs):
    text = runs["text"]
    assert "<script>alert(1)</script>" not in text
    assert "<img src=x onerror=alert(1)>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert text.count("<script") == 1  # ours, the filter script, allowed by hash in the CSP
    csp = html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text).group(1))
    assert "script-src 'sha256-" in csp and "default-src 'none'" in csp


def test_page_is_self_contained(runs):
    text = runs["text"]
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)
    assert "@import" not in text and "url(http" not in text
    plots = re.findall(r'<img class="plot" src="data:image/png;base64,', text)
    # accuracy and quadrants; for run A distributions, ROC, reliability and dynamics (run B has no
    # letter probabilities, so it gets a note in place of its three confidence figures)
    assert len(plots) == 6
    assert text.count("Nothing to plot") == 3


# --- statistics behind the figures match metrics.json -----------------------------------------------


def test_roc_auc_and_reliability_ece_equal_metrics(runs):
    for d in runs["dirs"]:
        m = metrics_of(d)["variants"]
        records = read_records(d / "records.jsonl")
        for v in VARIANTS:
            for score, key in (("p_base", "auroc_p_base"), ("neg_entropy", "auroc_neg_entropy")):
                curve = roc(records, v, score)
                assert (curve.auc if curve else None) == pytest.approx(m[v][key]), (d.name, v, key)
            assert reliability(records, v).ece == pytest.approx(m[v]["ece"]), (d.name, v)
    assert any(roc(read_records(runs["a"] / "records.jsonl"), v, "p_base") for v in VARIANTS)


def test_mcnemar_exact():
    # 6 discordant pairs all one way: two-sided exact p = 2 * 0.5**6
    assert mcnemar([True] * 6 + [False] * 4, [False] * 10).p_value == pytest.approx(0.03125)
    same = mcnemar([True, False], [True, False])
    assert (same.a_only, same.b_only, same.p_value) == (0, 0, 1.0)
    assert mcnemar([], []).p_value is None
    with pytest.raises(ValueError):
        mcnemar([True], [])


def test_dynamics_series_over_seeds():
    series = dynamics_series(dynamics_rows(), "accuracy")[(None, "base")]
    assert series.steps == [0, 50, 100] and series.seeds == 3
    assert series.mean[0] == pytest.approx(0.32) and series.lo[0] == pytest.approx(0.30)
    assert series.hi[2] == pytest.approx(0.64)


# --- sections and the browser ---------------------------------------------------------------------


def test_sample_browser(runs):
    text = runs["text"]
    assert text.count('<article class="sample">') == N
    assert len(re.findall(r'<img class="thumb" src="data:image/png;base64,', text)) == N
    assert synth.make_sample(3, 0).question.replace("'", "&#39;") in text
    attempts = re.findall(
        r'<div class="attempt" data-variant="([^"]+)" data-quadrant="([^"]+)" '
        r'data-outcome="([^"]+)" data-run="(\d)"',
        text,
    )
    assert len(attempts) == N * len(VARIANTS) * 2
    assert {a[2] for a in attempts} == {"correct", "incorrect", "error"}
    assert {a[3] for a in attempts} == {"0", "1"}
    # the one missing replay row of run B is an error record, outside every quadrant
    assert [a for a in attempts if a[2] == "error"] == [("wrong_caption", "error", "error", "1")]
    # the caption a wrong_caption prompt carried is shown with the answer
    assert "user turn adds" in text and "Caption: " in text
    for v in VARIANTS:
        assert f'<option value="{v}">{v}</option>' in text


def test_dynamics_section_only_with_dynamics(runs, tmp_path):
    assert 'id="dynamics"' in runs["text"] and 'alt="training dynamics"' in runs["text"]
    single = build_report([runs["b"]], tmp_path / "b.html").read_text()
    assert 'id="dynamics"' not in single and "Run against run" not in single


def test_seed_sweep_dir_gives_the_spread_over_seeds(tmp_path):
    sweep = tmp_path / "grpo-faithful"
    for seed in (0, 1):
        (sweep / f"seed-{seed}").mkdir(parents=True)
        rows = [r for r in dynamics_rows() if r["seed"] == seed]
        (sweep / f"seed-{seed}" / "dynamics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run,) = load_runs([sweep])
    assert run.label == "grpo-faithful"
    assert dynamics_series(run.dynamics, "accuracy")[(None, "base")].seeds == 2
    assert [r.label for r in load_runs([sweep / "seed-0"])] == ["grpo-faithful/seed-0"]


def test_training_dir_with_dynamics_only(tmp_path):
    train = tmp_path / "grpo-run"
    train.mkdir()
    rows = [r | {"arm": "faithful", "distinct_think_share": 0.5} for r in dynamics_rows()]
    (train / "dynamics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 15')  # torn
    text = build_report([train]).read_text()
    assert (train / "report.html").exists()
    assert 'alt="training dynamics"' in text and 'data-source="accuracy"' not in text


def test_cli_report_and_default_path(runs, capsys):
    assert main(["report", str(runs["a"]), str(runs["b"])]) == 0
    assert (runs["a"].parent / "report.html").exists()  # several runs: their common parent
    assert (runs["a"].parent / "report.md").exists() and (runs["a"].parent / "report.tex").exists()
    assert main(["report", str(runs["a"])]) == 0
    assert (runs["a"] / "report.html").exists()
    assert main(["report", str(runs["a"] / "records.jsonl")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["report", str(runs["a"]), "--html", str(runs["a"] / "tables.md")]) == 2
    assert "overwritten" in capsys.readouterr().err


def test_not_a_run_dir(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_labels(runs):
    assert short_model("replay:/tmp/x/run-a.jsonl") == "replay:run-a"
    assert short_model("openai:gpt-4o@http://localhost:8000/v1") == "openai:gpt-4o"
    assert short_model("hf:Qwen/Qwen2.5-VL-7B-Instruct") == "hf:Qwen/Qwen2.5-VL-7B-Instruct"
    assert short_model("tiny") == "tiny"
    assert short_model("tiny:/tmp/demo/train/plain-seed-0/final") == "tiny:plain-seed-0/final"
    assert short_model("hf:runs/g/checkpoint-40") == "hf:g/checkpoint-40"
    assert [r.label for r in load_runs(runs["dirs"])] == ["replay:run-a", "replay:run-b"]


# --- the page in a real browser -------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed "
    "(apt-get install -y chromium) so the page cannot be opened in a browser",
)


def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *extra,
        page.as_uri(),
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def console_messages(stderr: str) -> list[str]:
    # Chromium logs every console message (script errors, CSP refusals) as INFO:CONSOLE lines.
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


@needs_chromium
def test_console_check_catches_a_script_error(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    assert console_messages(chromium(page, tmp_path / "profile", "--dump-dom").stderr)


@needs_chromium
def test_report_opens_in_chromium(runs, tmp_path):
    shot = runs["html"].with_suffix(".png")
    done = chromium(runs["html"], tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,2000")
    assert shot.exists() and shot.stat().st_size > 20_000, done.stderr[-2000:]
    assert not console_messages(done.stderr)
    dom = chromium(runs["html"], tmp_path / "profile2", "--dump-dom")
    assert not console_messages(dom.stderr)
    # the filter script ran to its end (so the CSP hash matched and nothing threw)
    assert 'data-browser-ready="1"' in dom.stdout
    assert f'<strong id="shown-count">{N}</strong>' in dom.stdout


FILTER_PROBE = """
var pick = function (name, value) {
  document.querySelector('select[data-filter="' + name + '"]').value = value;
};
pick("variant", "wrong_think");
pick("outcome", "correct");
document.querySelector('select[data-filter="outcome"]').dispatchEvent(new Event("change"));
var shown = Array.prototype.filter.call(document.querySelectorAll(".attempt"), function (a) {
  return !a.hidden;
});
document.body.setAttribute("data-probe", shown.map(function (a) {
  return a.getAttribute("data-variant") + ":" + a.getAttribute("data-outcome");
}).join(","));
document.body.setAttribute("data-probe-count", document.getElementById("shown-count").textContent);
"""


@needs_chromium
def test_filters_toggle_samples_in_chromium(runs, tmp_path):
    """The page's filter script, driven by a probe script added (with its hash) to a copy of the page."""
    text = runs["text"]
    digest = base64.b64encode(hashlib.sha256(FILTER_PROBE.encode()).digest()).decode()
    text = text.replace("script-src ", f"script-src &#39;sha256-{digest}&#39; ", 1)
    text = text.replace("</body>", f"<script>{FILTER_PROBE}</script></body>", 1)
    page = tmp_path / "probe.html"
    page.write_text(text)
    done = chromium(page, tmp_path / "profile", "--dump-dom")
    assert not console_messages(done.stderr)
    probe = re.search(r'data-probe="([^"]*)"', done.stdout).group(1).split(",")
    count = int(re.search(r'data-probe-count="(\d+)"', done.stdout).group(1))
    records = [r for d in runs["dirs"] for r in read_records(d / "records.jsonl")]
    expected = [r for r in records if r["variant"] == "wrong_think" and r["correct"] and r["error"] is None]
    assert probe == ["wrong_think:correct"] * len(expected) and expected
    assert count == len({r["sample_id"] for r in expected}) < N


def test_a_runs_fidelity_warnings_lead_the_page(runs):
    # Run B's saved responses carry no letter probabilities: the page says so before any number.
    text = runs["text"]
    section = text[text.index('id="fidelity"') : text.index('id="runs"')]
    assert "no letter probabilities" in section and "run-b" in section.lower()
    assert metrics_of(runs["a"])["warnings"] == []


# --- the report a person reads: a study's folders, labels, sizes ----------------------------------


@pytest.fixture(scope="module")
def study(runs, tmp_path_factory) -> dict:
    """A study's layout (study.py) around copies of run B (no letter probabilities, so no per-run
    figures to draw): eval/sft, eval/plain-seed-0, eval/plain-seed-1, and the arm's training folder."""
    root = tmp_path_factory.mktemp("study")
    (root / "study.json").write_text("{}")
    evals = []
    for name, model in (("sft", "tiny"), ("plain-seed-0", None), ("plain-seed-1", None)):
        out = root / "eval" / name
        shutil.copytree(runs["b"], out)
        seed = name.rsplit("-", 1)[-1]
        for f in ("config.json", "metrics.json"):  # the SPEC an arm's evaluation records
            data = json.loads((out / f).read_text())
            data["model"] = model or f"tiny:{root}/train/plain/seed-{seed}/final"
            (out / f).write_text(json.dumps(data))
        evals.append(out)
    train = root / "train" / "plain" / "seed-0"
    train.mkdir(parents=True)
    (train / "dynamics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dynamics_rows()[:6]))
    lines: list[str] = []
    html_path = build_report([*evals, root / "train" / "plain"], root / "report.html", log=lines.append)
    return {"evals": evals, "train": root / "train" / "plain", "html": html_path, "log": lines}


def test_study_runs_are_labelled_by_arm_and_seed(study):
    loaded = load_runs([*study["evals"], study["train"]])
    assert [r.label for r in loaded] == ["sft", "plain, seed 0", "plain, seed 1", "plain"]
    assert policy_name("tiny:/tmp/demo/train/faithful/seed-1/final") == "faithful, seed 1"
    assert policy_name("hf:runs/grpo/checkpoint-40") == "grpo, step 40"
    assert policy_name("tiny") is None and policy_name("hf:Qwen/Qwen2.5-VL-7B-Instruct") is None


def test_training_folders_are_not_runs(study):
    text = study["html"].read_text()
    header = re.search(r'<p class="sub">(.*?)</p>', text).group(1)
    assert header == f"3 runs · {len(VARIANTS)} variants · synth:{N} · training dynamics of plain"
    runs_table = text[
        text.index('<table class="runs">') : text.index("</table>", text.index('<table class="runs">'))
    ]
    assert runs_table.count("<tr>") == 1 + 3 and "?" not in runs_table
    assert 'alt="training dynamics"' in text


def test_run_against_run_defaults_to_one_reference(study):
    loaded = load_runs(study["evals"])
    rows = lambda **kw: [(r.label, r.metric) for r in comparison_table(loaded, **kw).rows]  # noqa: E731
    assert rows() == [("plain, seed 0", "vs sft"), ("plain, seed 1", "vs sft")]
    ref = resolve_reference(loaded, "plain-seed-0")  # a folder name does too
    assert rows(reference=ref) == [("sft", "vs plain, seed 0"), ("plain, seed 1", "vs plain, seed 0")]
    assert len(rows(all_pairs=True)) == 3
    with pytest.raises(UsageError, match="none of the evaluation runs"):
        resolve_reference(loaded, "augment, seed 0")
    with pytest.raises(UsageError, match="no --reference"):
        build_report(study["evals"], reference="sft", all_pairs=True)
    args = build_parser().parse_args(["report", "d1", "d2", "--reference", "sft", "--all-pairs"])
    assert (args.reference, args.all_pairs) == ("sft", True)


def test_progress_lines_while_it_builds(study):
    log = study["log"]
    assert log[0].startswith("report [") and "read 4 run folders" in log[0]
    assert any("sample browser" in line for line in log) and "wrote" in log[-1] and "MB" in log[-1]


@pytest.mark.parametrize("path_labels", [False, True], ids=["arm-labels", "checkpoint-paths"])
def test_accuracy_tick_labels_do_not_overlap(path_labels):
    variants = resolve_variants("all")
    names = ["sft"] + [
        f"{a}, seed {s}" for s in (0, 1) for a in ("plain", "augment", "faithful", "augment+faithful")
    ]
    if path_labels:  # what the labels were before a study's runs were named: their policies' paths
        names = [f"tiny:/tmp/demo/train/{n}/final" for n in names]
    metrics = {"variants": {v: {"accuracy": 0.5, "accuracy_ci": [0.4, 0.6]} for v in variants}}
    fake = [Run(i, Path(f"/r/{i}"), n, {}, metrics, [], []) for i, n in enumerate(names)]
    fig = plots.accuracy_figure(fake, variants, variant_colours(variants))
    fig.draw_without_rendering()
    (ax,) = fig.axes
    boxes = plots.tick_label_boxes(ax)
    assert len(boxes) == len(names)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert fig.get_figwidth() <= plots.MAX_WIDTH
    # the bars keep most of the figure: labels may not squeeze the axes flat
    assert ax.get_window_extent().height > 0.4 * fig.bbox.height


def test_thumbnails_are_small():
    from PIL import Image

    photo = Image.effect_noise((640, 480), 60).convert("RGB")  # a photograph's worth of detail
    uri = thumbnail(Sample("p", "q", ("a", "b"), "A", image=photo))
    assert uri.startswith("data:image/jpeg;base64,") and len(uri) < 12_000
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as img:
        assert max(img.size) == THUMB
    drawn = thumbnail(synth.make_sample(0, 0))  # a synthetic picture stays sharp and tiny
    assert drawn.startswith("data:image/png;base64,") and len(drawn) < 2_000


def test_a_studys_page_stays_small(runs):
    # The browser shows the first samples whose answers fit its budget: a study's 9 runs x 9
    # variants answer 81 times per sample, so 150 samples would be 12,150 answers.
    assert len(shown_ids({f"s{i}": 81 for i in range(150)}, MAX_SAMPLES, MAX_ATTEMPTS)) == MAX_ATTEMPTS // 81
    assert len(shown_ids({f"s{i}": 500 for i in range(20)}, MAX_SAMPLES, MAX_ATTEMPTS)) == MIN_SAMPLES
    text = runs["text"]
    figures = sum(map(len, re.findall(r'<img class="plot" src="([^"]+)"', text)))
    answers = text.count('<div class="attempt"')
    per_answer = (len(text) - figures) / answers  # the fixed part of the page counted in too
    per_figure = figures / text.count('<img class="plot"')
    # a study: 9 runs, 4 arms; 3 figures a run, 1 an arm, accuracy and quadrants
    assert per_answer * MAX_ATTEMPTS + per_figure * (9 * 3 + 4 + 2) < 5_000_000, (per_answer, per_figure)


@needs_chromium
def test_study_page_in_chromium_has_a_header_without_unknowns(study, tmp_path):
    done = chromium(study["html"], tmp_path / "profile", "--dump-dom")
    assert not console_messages(done.stderr)
    assert 'data-browser-ready="1"' in done.stdout  # loaded, and its script ran to the end
    header = re.search(r'<header class="top">(.*?)</header>', done.stdout, re.S).group(1)
    sub = re.search(r'<p class="sub">(.*?)</p>', header).group(1)
    assert sub.startswith("3 runs · ") and "?" not in header


def test_the_browser_shows_every_image_of_a_multi_image_sample(tmp_path):
    """Loaded from the run's data file, a two-image sample shows two thumbnails in order; a
    one-image sample still shows one."""
    from PIL import Image

    for name, colour in (("red.png", "red"), ("blue.png", "blue")):
        Image.new("RGB", (16, 16), colour).save(tmp_path / name)
    row = {"question": "Which image is red?", "options": ["the first", "the second"], "answer": "A"}
    data = tmp_path / "multi.jsonl"
    data.write_text(
        json.dumps({"id": "two", **row, "images": ["red.png", "blue.png"]})
        + "\n"
        + json.dumps({"id": "one", **row, "image": "blue.png"})
        + "\n"
    )
    samples = load_file(data)
    replay = tmp_path / "replay.jsonl"
    replay.write_text(
        "".join(
            json.dumps({"sample_id": s.sample_id, "variant": "base", "response": "<answer>A</answer>"}) + "\n"
            for s in samples
        )
    )
    spec = RunSpec(model=f"replay:{replay}", data=str(data.resolve()), variants=["base"])
    run_eval(ReplayModel(replay), samples, spec, tmp_path / "run", judges=[RuleJudge()], progress=False)
    text = build_report([tmp_path / "run"], tmp_path / "report.html").read_text()
    thumbs = re.findall(r'<img class="thumb" src="(data:image/[^"]+)" alt="(image[^"]*)"', text)
    assert [alt for _, alt in thumbs] == ["image 1 of two", "image 2 of two", "image of one"]
    colours = [
        Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB").getpixel((0, 0))
        for uri, _ in thumbs
    ]
    assert colours == [(255, 0, 0), (0, 0, 255), (0, 0, 255)]

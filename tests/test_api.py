"""The Python API (vlmstress.evaluate): the command line's engine, in memory or logged, on SPECs or
objects; and docs/api.md, whose code blocks run as they stand."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vlmstress
from vlmstress.api import prepare_eval
from vlmstress.cli import main
from vlmstress.data import synth
from vlmstress.errors import UsageError
from vlmstress.judge.rule import RuleJudge
from vlmstress.runlog import RECORDS, read_records

DOCS = Path(__file__).parent.parent / "docs" / "api.md"
TWO = ["base", "wrong_think"]


@pytest.fixture(scope="module")
def tiny():
    from vlmstress.models.registry import load_model

    return load_model("tiny")


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*"))


def test_evaluate_in_memory_returns_records_and_metrics_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = vlmstress.evaluate("tiny", "synth:6", variants=TWO)
    assert files_under(tmp_path) == []
    assert result.path is None and isinstance(result, vlmstress.EvalResult)
    assert len(result.records) == 12
    assert {(r["sample_id"], r["variant"]) for r in result.records} == {
        (s.sample_id, v) for s in synth.generate(6) for v in TWO
    }
    assert result.metrics["model"] == "tiny" and result.metrics["data"] == "synth:6"
    assert set(result.metrics["variants"]) == set(TWO)
    assert result.metrics["variants"]["base"]["n"] == 6
    assert all(r["judge"]["by"] == "rule" for r in result.records)

    # The same call logged to `out` is the command line's run: the same records, resumable.
    logged = vlmstress.evaluate("tiny", "synth:6", variants=TWO, out=tmp_path / "run")
    assert logged.path == tmp_path / "run"
    assert logged.records == result.records == read_records(tmp_path / "run" / RECORDS)
    assert logged.metrics == result.metrics
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == logged.metrics
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "tiny" and config["model_options"] == {} and config["versions"]["torch"]


def test_without_judges_consistency_adjusted_accuracy_is_null(tiny):
    result = vlmstress.evaluate(tiny, synth.generate(3), variants=["base"], judges=[])
    assert all(r["judge"] is None for r in result.records)
    assert result.metrics["variants"]["base"]["accuracy"] is not None
    assert result.metrics["variants"]["base"]["consistency_adjusted_accuracy"] is None


def test_objects_name_the_run_and_other_samples_are_another_run(tiny, tmp_path):
    samples = synth.generate(4, seed=3)
    result = vlmstress.evaluate(tiny, samples, variants=["base"], judges=[RuleJudge()], out=tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert result.metrics["model"] == config["model"] == tiny.name
    assert config["judges"] == ["rule"]
    assert re.fullmatch(r"samples:4:[0-9a-f]{12}", config["data"])
    # The same samples resume (nothing to do), other samples are refused before anything runs.
    assert vlmstress.evaluate(tiny, samples, variants=["base"], out=tmp_path).records == result.records
    with pytest.raises(UsageError, match="different data"):
        vlmstress.evaluate(tiny, synth.generate(4, seed=4), variants=["base"], out=tmp_path)


def test_a_change_of_model_options_is_another_run(tmp_path, capsys):
    out = tmp_path / "run"
    vlmstress.evaluate("tiny", "synth:2", variants=["base"], out=out)
    with pytest.raises(ValueError, match="different model_options"):
        vlmstress.evaluate("tiny", "synth:2", variants=["base"], out=out, model_options={"dtype": "float32"})
    # The command line refuses it the same way, in one line.
    args = ["eval", "--model", "tiny", "--data", "synth:2", "--variants", "base", "--out", str(out)]
    capsys.readouterr()  # what the loads above wrote (transformers' progress bars)
    assert main([*args, "--model-opt", "dtype=float32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "different model_options" in err and len(err.splitlines()) == 1
    # Options given from the start are recorded, and a rerun with the same options resumes.
    other = tmp_path / "other"
    assert main([*args[:-1], str(other), "--model-opt", "dtype=float32"]) == 0
    assert json.loads((other / "config.json").read_text())["model_options"] == {"dtype": "float32"}
    assert main([*args[:-1], str(other), "--model-opt", "dtype=float32"]) == 0


def test_credentials_in_model_options_are_never_recorded():
    prepared = prepare_eval(
        "openai:m@http://127.0.0.1:9/v1",
        "synth:2",
        model_options={"api_key": "sk-secret", "hf_token": "hf-secret", "timeout": 5},
    )
    assert prepared.spec.model_options == {"api_key": "<redacted>", "hf_token": "<redacted>", "timeout": 5}
    assert prepared.model_options["api_key"] == "sk-secret"  # the backend still gets it
    assert "secret" not in repr(prepared) and "secret" not in json.dumps(prepared.spec.__dict__)


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        ({"variants": ["base", "bogus"]}, UsageError, "unknown variant"),
        ({"variants": "base,bogus"}, UsageError, "unknown variant"),
        ({"variants": []}, UsageError, "none given"),
        ({"variants": [1]}, TypeError, "variants"),
        ({"template": "nosuch"}, UsageError, "unknown template"),
        ({"batch_size": 0}, UsageError, "batch_size"),
        ({"max_new_tokens": 2.5}, UsageError, "max_new_tokens"),
        ({"limit": -1}, UsageError, "limit"),
        ({"judges": ["nosuch:x"]}, UsageError, "judge SPEC"),
        ({"judges": [object()]}, TypeError, "judge"),
        ({"model": "nosuch:x"}, UsageError, "model SPEC"),
        ({"model": object()}, TypeError, "model"),
        ({"data": "nosuch-benchmark"}, UsageError, "nosuch-benchmark"),
        ({"data": []}, UsageError, "no samples"),
        ({"data": ["not a sample"]}, TypeError, "Sample"),
        ({"model_options": {"dtype": object()}}, UsageError, "JSON values"),
    ],
)
def test_bad_arguments_raise_before_anything_is_loaded_or_written(tmp_path, kwargs, error, needle):
    args = {"model": "tiny", "data": "synth:2", **kwargs}
    model, data = args.pop("model"), args.pop("data")
    with pytest.raises(error, match=needle):
        vlmstress.evaluate(model, data, out=tmp_path / "run", **args)
    assert not (tmp_path / "run").exists()
    assert issubclass(UsageError, ValueError)  # what a Python caller catches


def test_model_options_with_a_built_model_are_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="already built"):
        vlmstress.evaluate(tiny, "synth:2", model_options={"dtype": "float32"}, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def test_docs_api_md_runs_as_written(tmp_path):
    blocks = python_blocks(DOCS.read_text())
    assert len(blocks) >= 4
    # In order, as one script in a fresh process (a notebook run top to bottom), in an empty folder.
    script = tmp_path / "api_md.py"
    script.write_text("\n".join(blocks))
    work = tmp_path / "work"
    work.mkdir()
    res = subprocess.run([sys.executable, str(script)], cwd=work, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "12 None" in res.stdout  # the in-memory run's count and path, as the page says
    # The logged run wrote its folder, and the in-memory runs nothing at all.
    assert [p.name for p in work.iterdir()] == ["runs"]
    # ...and the report its page, with the tables beside it
    names = sorted(p.name for p in (work / "runs").iterdir())
    assert names == ["api-demo", "api-report.html", "api-report.md", "api-report.tex"]
    assert len(read_records(work / "runs" / "api-demo" / RECORDS)) == 12


def test_train_grpo_takes_a_dict_a_path_or_a_config_and_validates_overrides(tmp_path):
    """The config forms reach the same validation: a bad field (or override) is one UsageError
    naming it, raised before any folder is created."""
    import yaml

    from vlmstress.errors import UsageError

    cfg = yaml.safe_load((Path(__file__).parent.parent / "configs" / "grpo-tiny.yaml").read_text())
    out = tmp_path / "never"
    with pytest.raises(UsageError, match="learning_rate"):
        vlmstress.train_grpo({**cfg, "out": str(out)}, learning_rate="fast")
    with pytest.raises(UsageError, match="max_steps"):
        vlmstress.train_grpo(
            Path(__file__).parent.parent / "configs" / "grpo-tiny.yaml", max_steps=-1, out=str(out)
        )
    from vlmstress.train.config import GRPORunConfig

    with pytest.raises(UsageError, match="num_generations"):
        vlmstress.train_grpo(GRPORunConfig.model_validate(cfg), num_generations="x")
    with pytest.raises(TypeError):
        vlmstress.train_grpo(42)
    assert not out.exists()

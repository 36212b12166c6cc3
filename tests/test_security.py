"""Security: no code execution from files, no secrets in outputs, atomic run files (docs/reliability.md)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai_server import ChatRequest, FakeOpenAIServer, error_reply

from vlmstress import runlog
from vlmstress.data import synth
from vlmstress.models.base import Generation
from vlmstress.runlog import write_atomic
from vlmstress.runner import RunSpec, run_eval

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "tests", "benchmarks")

# ---------------------------------------------------------------------------------------------------
# Unsafe deserialisation and dynamic code, found in the syntax tree (comments and strings that merely
# mention pickle are not code, so a text grep would cry wolf or, worse, be relaxed until it misses).

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
UNSAFE_BUILTINS = {"eval", "exec", "compile"}
UNSAFE_ATTRS = {
    ("yaml", "load"): "yaml.load (use yaml.safe_load)",
    ("yaml", "load_all"): "yaml.load_all (use yaml.safe_load_all)",
    ("yaml", "unsafe_load"): "yaml.unsafe_load",
    ("yaml", "full_load"): "yaml.full_load",
    ("os", "system"): "os.system",
    ("os", "popen"): "os.popen",
}
UNSAFE_KEYWORDS = {  # keyword=True in any call
    "trust_remote_code": "trust_remote_code=True runs code from the hub",
    "allow_pickle": "allow_pickle=True unpickles",
    "shell": "shell=True hands a string to the shell",
}


def unsafe_uses(source: str) -> list[str]:
    """What in `source` could run code that came from a file, a checkpoint or a config."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where}: import {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in UNSAFE_BUILTINS:
            found.append(f"{where}: {func.id}()")
        if isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if (owner, func.attr) in UNSAFE_ATTRS:
                found.append(f"{where}: {UNSAFE_ATTRS[owner, func.attr]}")
            if func.attr == "read_pickle":
                found.append(f"{where}: read_pickle")
            if owner == "torch" and func.attr == "load" and not _keyword_is(node, "weights_only", True):
                found.append(f"{where}: torch.load without weights_only=True")
            if func.attr == "from_pretrained" and _keyword_is(node, "use_safetensors", False):
                found.append(f"{where}: from_pretrained(use_safetensors=False) may unpickle")
        for name, why in UNSAFE_KEYWORDS.items():
            if _keyword_is(node, name, True):
                found.append(f"{where}: {why}")
    return found


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords
    )


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "from pickle import loads",
        "import joblib",
        "import torch\ntorch.load('x.pt')",
        "import torch\ntorch.load('x.pt', weights_only=False)",
        "eval(config['expr'])",
        "exec(open('hook.py').read())",
        "import yaml\nyaml.load(text, Loader=yaml.Loader)",
        "import yaml\nyaml.unsafe_load(text)",
        "import pandas as pd\npd.read_pickle('x.pkl')",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
        "AutoModel.from_pretrained(path, trust_remote_code=True)",
        "AutoModel.from_pretrained(path, use_safetensors=False)",
        "import subprocess\nsubprocess.run(cmd, shell=True)",
        "import os\nos.system(cmd)",
    ],
)
def test_the_scanner_finds_unsafe_code(snippet):
    assert unsafe_uses(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "model.eval()",
        "run_eval(model, samples)",
        "import ast\nast.literal_eval(text)",
        "import torch\ntorch.load('x.pt', weights_only=True)",
        "import yaml\nyaml.safe_load(text)",
        "s = 'we never use pickle or eval(...) here'  # nor exec(",
        "import subprocess\nsubprocess.run([sys.executable, '-c', code])",
    ],
)
def test_the_scanner_lets_safe_code_be(snippet):
    assert unsafe_uses(snippet) == []


def test_no_pickle_unsafe_torch_load_or_eval_exec_in_the_source_tree():
    files = sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))
    assert len(files) > 30 and any(p.name == "runner.py" for p in files)
    found = [
        f"{p.relative_to(ROOT)} {use}" for p in files for use in unsafe_uses(p.read_text(encoding="utf-8"))
    ]
    assert found == []


# ---------------------------------------------------------------------------------------------------
# Secrets

KEY = "sk-vlmstress-PLANTED-0123456789abcdef"
URL_PASSWORD = "URLPASS-PLANTED-fedcba9876543210"
SECRETS = (KEY, URL_PASSWORD)
JUDGE_START = "You check whether a model's final answer follows"


def model_reply(request: ChatRequest):
    if "Question number 1:" in request.user_text:
        # Servers echo keys in auth errors; that text ends up in a record's `error`.
        return error_reply(400, f"Incorrect API key provided: {KEY}")
    return "<think>The first option is right, so A.</think><answer>A</answer>"


def judge_reply(request: ChatRequest):
    if not request.user_text.startswith(JUDGE_START):
        return error_reply(400, "this server only judges")
    return '{"supports": "A", "consistent": true}'


def test_api_keys_never_reach_outputs_logs_or_reports(tmp_path):
    rows = [
        {"id": f"q{k}", "question": f"Question number {k}: which?", "options": ["x", "y"], "answer": "A"}
        for k in range(4)
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    env = {
        **os.environ,
        "OPENAI_API_KEY": KEY,
        "VLMSTRESS_OPENAI_RETRIES": "0",
        "VLMSTRESS_OPENAI_TIMEOUT": "5",
    }
    # The model server accepts only the planted key, so the run proves the key was really used.
    with (
        FakeOpenAIServer(model_reply, api_key=KEY) as model_server,
        FakeOpenAIServer(judge_reply) as judge_server,
    ):
        judge_url = judge_server.base_url.replace("http://", f"http://vlmuser:{URL_PASSWORD}@")
        commands = [
            [
                "eval",
                "--model",
                f"openai:vlm@{model_server.base_url}",
                "--judge",
                "rule",
                f"openai:j@{judge_url}",
            ]
            + ["--data", str(data), "--variants", "base,wrong_think", "--out", str(out)],
            ["report", str(out), "--html", str(tmp_path / "report" / "index.html")],
        ]
        results = [
            subprocess.run(
                [sys.executable, "-m", "vlmstress.cli", *c], env=env, capture_output=True, timeout=120
            )
            for c in commands
        ]
        assert model_server.n_requests >= 8 and judge_server.n_requests > 0
    for res in results:
        assert res.returncode == 0, res.stderr.decode()

    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sum(r["error"] is None for r in records) == 6
    assert all("Incorrect API key provided: ***" in r["error"] for r in records if r["error"])
    assert {r["judges"][1]["verdict"] for r in records if r["error"] is None} == {"consistent"}
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != data]
    assert {"config.json", "metrics.json", "summary.md", "index.html", "index.md"} <= {
        p.name for p in written
    }
    assert any("cache" in p.parts for p in written)
    for secret in SECRETS:
        for res in results:
            assert secret.encode() not in res.stdout + res.stderr
        leaks = [str(p) for p in written if secret.encode() in p.read_bytes()]
        assert leaks == [], f"{secret} found in {leaks}"
    # The judge is still named, by its SPEC without credentials.
    assert json.loads((out / "config.json").read_text())["judges"][1] == f"openai:j@{judge_server.base_url}"


# ---------------------------------------------------------------------------------------------------
# Atomic run files


class OneLetter:
    name = "one-letter"

    def generate(self, prompts, *, max_new_tokens):
        return [Generation("<think>It is A.</think><answer>A</answer>") for _ in prompts]


def test_run_files_are_written_by_rename_never_in_place(tmp_path, monkeypatch):
    opened_for_writing, renamed = [], []
    real_open, real_replace = Path.open, os.replace

    def spy_open(self, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            opened_for_writing.append(self.name)
        return real_open(self, mode, *args, **kwargs)

    def spy_replace(src, dst):
        # What replaces a run file is already whole: it parses.
        text = Path(src).read_text()
        if str(dst).endswith(".json"):
            json.loads(text)
        renamed.append((Path(src).parent, Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(Path, "open", spy_open)
    monkeypatch.setattr(runlog.os, "replace", spy_replace)
    out = tmp_path / "run"
    run_eval(
        OneLetter(), synth.generate(3), RunSpec(model="m", data="d", variants=["base"]), out, progress=False
    )
    for name in ("metrics.json", "config.json", "summary.md"):
        assert name not in opened_for_writing
        assert (out, out / name) in renamed
    assert "records.jsonl" in opened_for_writing  # the log is appended to, by design


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_atomic(target, '{"old": true}')

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runlog.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, '{"new": true, "padding": "' + "x" * 100_000 + '"}')
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]

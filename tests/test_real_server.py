"""The openai backend against a real server: `transformers serve` (transformers[serving], installed by
`pip install -e ".[serve]"`) serving the shipped tiny model on 127.0.0.1.

This is the server nobody on this project wrote: it splits the think into `reasoning_content`, refuses
vLLM's continuation fields with 422 and ignores logprobs. The shapes it cannot produce (vLLM's
logprobs and continuation) are covered against tests/fake_openai_server.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vlmstress.cli import main
from vlmstress.models.tiny import ASSET_DIR
from vlmstress.runlog import RECORDS, read_records

pytest.importorskip("fastapi", reason="needs transformers[serving]: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="needs transformers[serving]: pip install -e '.[serve]'")

pytestmark = pytest.mark.slow
VARIANTS = "base,wrong_think,stop_think,wrong_caption"
DATA = "synth:12"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    launcher = Path(__file__).with_name("transformers_serve.py")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(launcher), str(ASSET_DIR), "--device", "cpu", "--host", "127.0.0.1"]
            + ["--port", str(port), "--log-level", "warning"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"transformers serve did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _eval(model: str, out: Path, *extra: str) -> int:
    return main(["eval", "--model", model, "--data", DATA, "--variants", VARIANTS, "--out", str(out), *extra])


def test_the_study_survives_transformers_serve(server_url, tmp_path, capsys):
    assert _eval("tiny", tmp_path / "local") == 0
    capsys.readouterr()
    assert _eval(f"openai:{ASSET_DIR}@{server_url}", tmp_path / "served") == 0
    err = capsys.readouterr().err

    served = {(r["sample_id"], r["variant"]): r for r in read_records(tmp_path / "served" / RECORDS)}
    local = {(r["sample_id"], r["variant"]): r for r in read_records(tmp_path / "local" / RECORDS)}
    assert len(served) == len(local) == 48
    assert all(r["error"] is None for r in served.values()), [r["error"] for r in served.values()]

    for variant in ("base", "wrong_caption"):
        keys = [k for k in local if k[1] == variant]
        same = sum(served[k]["answer"] == local[k]["answer"] for k in keys)
        assert same >= 0.9 * len(keys), (variant, same)
        # The think came back in the server's reasoning_content and was put back in its tags.
        with_think = [served[k] for k in keys if served[k]["think"]]
        assert len(with_think) >= 0.9 * len(keys)
        assert all(r["think_source"] == "reasoning_content" for r in with_think)
        assert all(r["prefill_mode"] is None for r in with_think)

    metrics = json.loads((tmp_path / "served" / "metrics.json").read_text())
    local_metrics = json.loads((tmp_path / "local" / "metrics.json").read_text())
    served_caa = metrics["variants"]["base"]["consistency_adjusted_accuracy"]
    assert served_caa is not None
    assert abs(served_caa - local_metrics["variants"]["base"]["consistency_adjusted_accuracy"]) <= 0.15

    # The server refuses continue_final_message (422): the prefill moved to the user turn, and the
    # run says so wherever its numbers are read.
    for variant in ("wrong_think", "stop_think"):
        assert metrics["variants"][variant]["prefill_mode"] == "user"
        assert local_metrics["variants"][variant]["prefill_mode"] == "assistant"
        assert all(r["prefill_mode"] == "user" for k, r in served.items() if k[1] == variant)
    assert metrics["variants"]["base"]["prefill_mode"] is None
    assert "run in user mode" in err and "Unexpected fields in the request" in err
    summary = (tmp_path / "served" / "summary.md").read_text()
    assert "wrong_think \u2020" in summary and "written into the user turn" in summary

    # It ignores logprobs: said before the run and in the summary; the numbers are null, not 0.
    assert "no letter probabilities from this server" in err
    assert "no letter probabilities" in summary
    for v in metrics["variants"].values():
        assert v["mean_entropy"] is None and v["mean_p_correct"] is None and v["ece"] is None
    assert local_metrics["variants"]["base"]["mean_entropy"] is not None
    assert local_metrics["warnings"] == []


def test_assistant_mode_is_refused_where_the_server_cannot_continue_a_turn(server_url, tmp_path, capsys):
    code = _eval(
        f"openai:{ASSET_DIR}@{server_url}", tmp_path / "strict", "--model-opt", "prefill_mode=assistant"
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("vlmstress: error: prefill_mode=assistant: ") and "cannot continue" in err[-1]
    assert not read_records(tmp_path / "strict" / RECORDS)

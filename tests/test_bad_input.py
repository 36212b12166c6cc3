"""The bad-input catalogue, end to end through the command line (docs/reliability.md).

Bad data is the sample's problem: each bad row becomes error records, the run goes on, exits 0 and
counts them in metrics.json `errors`. Bad usage is the user's: one line on stderr, exit 2, no
traceback, and no run directory left behind.
"""

from __future__ import annotations

import importlib.util
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from vlmstress.cli import main
from vlmstress.runlog import read_records

OPTIONS = ["left", "right", "above", "below"]
VARIANTS = ["base", "wrong_think"]


def png(width: int = 8, height: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with one empty IDAT: a few dozen
    bytes that would decode to width x height x 3 bytes (30 GB for 100k x 100k)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def row(sample_id: str, **fields) -> dict:
    return {"id": sample_id, "question": "Where is the red square?", "options": OPTIONS, "answer": "B"} | {
        "image": "good.png",
        **fields,
    }


# id -> (row, the words its error record must carry); None: a good row.
CATALOGUE = {
    "good-1": (row("good-1"), None),
    "corrupt-image": (row("corrupt-image", image="corrupt.png"), "not a recognised image format"),
    "truncated-image": (row("truncated-image", image="truncated.png"), "corrupt"),
    "missing-image": (row("missing-image", image="nowhere/missing.png"), "not found"),
    "bomb": (row("bomb", image="bomb.png"), "too large"),
    "no-options": (row("no-options", options=[]), "no options"),
    "27-options": (row("27-options", options=[f"o{i}" for i in range(27)]), "at most 26"),
    "answer-letter-outside": (row("answer-letter-outside", answer="F"), "not among"),
    "answer-text-outside": (row("answer-text-outside", answer="purple"), "not among"),
    "empty-question": (row("empty-question", question="   "), "empty question"),
    "options-not-a-list": (row("options-not-a-list", options={"a": 1}), "must be a list"),
    "option-not-text": (row("option-not-text", options=["left", ["nested"]]), "must be text"),
    "question-not-text": (row("question-not-text", question=42), "must be text"),
    "answer-not-scalar": (row("answer-not-scalar", answer=[1]), "answer must be"),
    "dup": (row("dup"), None),
    "good-2": (row("good-2", answer="above"), None),
}
NON_UTF8_ID = "non-utf8"  # written by hand below: JSON cannot carry the bad byte
DUPLICATE_ID = "dup#dup1"  # the second row with id "dup"
N_BAD = sum(1 for _, words in CATALOGUE.values() if words) + 2


@pytest.fixture
def bad_data(tmp_path: Path) -> Path:
    (tmp_path / "good.png").write_bytes(png())
    (tmp_path / "corrupt.png").write_bytes(b"this is not an image at all" * 10)
    (tmp_path / "truncated.png").write_bytes(png(64, 64)[:60])
    (tmp_path / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    lines = [json.dumps(r) for r, _ in CATALOGUE.values()]
    lines.append(json.dumps(row("dup", answer="A")))  # the duplicate id
    bad = (
        json.dumps(row(NON_UTF8_ID, question="Where is the QQ square?")).encode().replace(b"QQ", b"\xff\xfe")
    )
    path = tmp_path / "bad.jsonl"
    path.write_bytes("\n".join(lines).encode() + b"\n" + bad + b"\n")
    return path


def test_bad_rows_become_error_records_and_the_run_goes_on(tiny_ckpt, bad_data, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["eval", "--model", f"tiny:{tiny_ckpt}", "--data", str(bad_data), "--variants", ",".join(VARIANTS)]
        + ["--max-new-tokens", "4", "--out", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    records = read_records(out / "records.jsonl")
    by_key = {(r["sample_id"], r["variant"]): r for r in records}
    n_rows = len(CATALOGUE) + 2
    assert len(records) == len(by_key) == n_rows * len(VARIANTS)

    expected = {sid: words for sid, (_, words) in CATALOGUE.items()}
    expected |= {NON_UTF8_ID: "non-UTF-8", DUPLICATE_ID: "duplicate sample id"}
    for (sid, variant), r in by_key.items():
        words = expected[sid]
        if words is None:
            assert r["error"] is None and r["response"] is not None, (sid, variant, r["error"])
        else:
            assert r["error"] and words in r["error"], (sid, variant, r["error"])
            assert "\n" not in r["error"] and "Traceback" not in r["error"]

    metrics = json.loads((out / "metrics.json").read_text())
    for variant in VARIANTS:
        m = metrics["variants"][variant]
        assert m["errors"] == N_BAD and m["n"] == n_rows - N_BAD, (variant, m["errors"], m["n"])


@pytest.mark.parametrize(
    "args, words",
    [
        (["--variants", "base,wrong_thinking"], "unknown variant"),
        (["--variants", ""], "variant"),
        (["--model", "gpt4"], "bad model SPEC"),
        (["--model", "openai:gpt-4o"], "openai needs MODEL@BASE_URL"),
        (["--model", "openai:gpt-4o@ftp://host/v1"], "openai needs MODEL@BASE_URL"),
        (["--model", "tiny:"], "bad model SPEC"),
        (["--judge", "rule", "gpt-judge"], "bad judge SPEC"),
        (["--data", "imagenet"], "unknown data 'imagenet'"),
        (["--data", "synth:ten"], "synth:N needs a positive whole number"),
        (["--data", "missing.jsonl"], "data file not found"),
        (["--data", "{tmp}"], "unknown data"),
        (["--data", "{tmp}/notes.txt"], "unsupported data file type '.txt'"),
        (["--data", "{tmp}/no-question.csv"], "no question column"),
        (["--data", "{tmp}/not-a-table.json"], "is not a table"),
        (["--template", "fancy"], "unknown template"),
        (["--batch-size", "0"], "positive"),
        # issue #19: each of these exited 1, or exited 2 but left the run directory behind
        (["--model", "tiny:{tmp}/missing"], "no such directory"),
        (["--model", "hf:/MISSING/DIR"], "no such directory"),
        (["--model", "hf:./missing-checkpoint"], "no such directory"),
        (["--model", "replay:{tmp}/missing.jsonl"], "replay file not found"),
        (["--model", "replay:{tmp}/empty.jsonl"], "has no rows"),
        (["--model", "replay:{tmp}/broken.jsonl"], "not valid JSON"),
        (
            ["--model", "replay:{tmp}/ok.jsonl", "--model-opt", "dtype=float32"],
            "replay models take no options",
        ),
        (["--model-opt", "dtype"], "KEY=VALUE"),
        (["--model-opt", "dtype=!!python/name:os.system"], "--model-opt dtype"),
        (["--model-opt", "no_such_option=1"], "no_such_option"),
        (["--model-opt", "dtype=float64"], "dtype"),  # refused by the backend, inside the run lock
        (["--dry-run", "--image-tokens", "-5"], "--image-tokens"),
        (["--dry-run", "--price-in", "nan"], "--price-in"),
        (["--dry-run", "--price-out", "-1"], "--price-out"),
    ]
    + ([] if importlib.util.find_spec("vllm") else [(["--model", "vllm:org/model"], "need vLLM installed")]),
)
def test_bad_usage_is_one_line_exit_2_and_leaves_no_run_directory(args, words, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "no-question.csv").write_text("a,b\n1,2\n")
    (tmp_path / "not-a-table.json").write_text('"just a string"')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    (tmp_path / "ok.jsonl").write_text('{"sample_id": "a", "variant": "base", "response": "A"}\n')
    out = tmp_path / "run"
    argv = ["eval", "--model", "tiny", "--data", "synth:2", "--out", str(out)]
    for flag, *values in _pairs(args):
        values = [v.replace("{tmp}", str(tmp_path)) for v in values]
        if flag in argv:
            at = argv.index(flag)
            argv[at + 1 : at + 2] = values
        else:
            argv += [flag, *values]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert "Traceback" not in err
    assert not out.exists()


def _pairs(args: list[str]) -> list[list[str]]:
    """['--judge', 'rule', 'x', '--data', 'd'] -> [['--judge', 'rule', 'x'], ['--data', 'd']]"""
    groups: list[list[str]] = []
    for a in args:
        if a.startswith("--"):
            groups.append([a])
        else:
            groups[-1].append(a)
    return groups


def test_bad_openai_settings_in_the_environment_are_usage_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLMSTRESS_OPENAI_RETRIES", "lots")
    argv = ["eval", "--model", "openai:m@http://127.0.0.1:9/v1", "--data", "synth:2", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "VLMSTRESS_OPENAI_RETRIES" in err, err


@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_config_file_with_unknown_keys_is_one_line_exit_2(kind, tmp_path):
    cfg = tmp_path / "c.yaml"
    required = "curriculum: []\n" if kind == "sft" else ""
    cfg.write_text(f"kind: {kind}\n{required}max_stepz: 3\n")
    # A real process: warnings printed while importing the training stack would break "one line".
    res = subprocess.run(
        [sys.executable, "-m", "vlmstress.cli", "train", kind, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "max_stepz" in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_bad_openai_settings_leave_no_run_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLMSTRESS_OPENAI_TIMEOUT", "-3")
    out = tmp_path / "run"
    argv = ["eval", "--model", "openai:m@http://127.0.0.1:9/v1", "--data", "synth:2", "--out", str(out)]
    assert main(argv) == 2
    assert "VLMSTRESS_OPENAI_TIMEOUT" in capsys.readouterr().err and not out.exists()


def _unwritable(tmp_path: Path) -> list[Path]:
    """Places nothing can be created, whoever runs the test (root included)."""
    (tmp_path / "a-file").write_text("x")
    places = [tmp_path / "a-file" / "run"]
    if Path("/sys").is_dir():
        places.append(Path("/sys/vlmstress-test-run"))
    return places


def _usage_error(argv: list[str], capsys, words: str) -> None:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err


def test_unwritable_outputs_and_unreadable_configs_are_usage_errors(tmp_path, capsys):
    for place in _unwritable(tmp_path):
        _usage_error(
            ["eval", "--model", "tiny", "--data", "synth:2", "--out", str(place)], capsys, str(place)
        )
        _usage_error(["data", "synth", "--n", "2", "--out", str(place)], capsys, str(place))
    replay = tmp_path / "r.jsonl"
    replay.write_text('{"sample_id": "a", "variant": "base", "response": "A"}\n')
    run = tmp_path / "run"
    assert (
        main(
            [
                "eval",
                "--model",
                f"replay:{replay}",
                "--data",
                "synth:2",
                "--variants",
                "base",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    capsys.readouterr()
    (tmp_path / "a-dir").mkdir()
    _usage_error(["report", str(run), "--html", str(tmp_path / "a-dir")], capsys, "a directory")
    assert list((tmp_path / "a-dir").iterdir()) == []
    (tmp_path / "latin1.yaml").write_bytes("max_steps: 3 # caf\xe9\n".encode("latin-1"))
    for config in (tmp_path / "latin1.yaml", tmp_path / "a-dir"):
        for kind in ("sft", "grpo"):
            _usage_error(["train", kind, "--config", str(config)], capsys, str(config))

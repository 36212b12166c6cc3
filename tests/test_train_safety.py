"""What a GRPO run folder promises across kills and second trainers (issue #19): a resume picks the
newest *complete* checkpoint, one trainer per folder, and configs that save often enough to resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from vlmstress.train.config import GRPORunConfig, load_config
from vlmstress.train.grpo import last_checkpoint, train_lock

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [
    ROOT / "configs" / "grpo-tiny.yaml",
    ROOT / "src" / "vlmstress" / "assets" / "configs" / "grpo-tiny.yaml",
]


def checkpoint(out: Path, step: int, *, state: str | None) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (folder / "trainer_state.json").write_text(state)
    return folder


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    assert last_checkpoint(tmp_path / "nothing-here") is None
    assert last_checkpoint(tmp_path) is None
    checkpoint(tmp_path, 2, state=json.dumps({"global_step": 2}))
    complete = checkpoint(tmp_path, 10, state=json.dumps({"global_step": 10}))
    checkpoint(tmp_path, 20, state=None)  # killed after the weights, before trainer_state.json
    checkpoint(tmp_path, 30, state='{"global_st')  # killed while trainer_state.json was written
    (tmp_path / "checkpoint-40").write_text("not a folder")
    assert last_checkpoint(tmp_path) == str(complete)


def write_config(tmp_path: Path, out: Path) -> Path:
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump({"init": "tiny", "out": str(out), "max_steps": 1}))
    return path


def test_a_second_trainer_on_a_held_folder_is_refused_and_touches_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "dynamics.jsonl").write_text('{"step": 0}\n')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    config = write_config(tmp_path, out)
    with train_lock(out):  # a live trainer holds the folder
        proc = subprocess.run(
            [sys.executable, "-m", "vlmstress.cli", "train", "grpo", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "another vlmstress process" in proc.stderr
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == {
            k: v for k, v in before.items() if k != ".lock"
        }
    with train_lock(out):  # released when its holder is done
        pass


def test_shipped_grpo_configs_save_often_enough_to_resume():
    texts = [p.read_text() for p in CONFIGS]
    assert texts[0] == texts[1]  # the packaged copy is the repository's
    cfg = load_config(CONFIGS[0], GRPORunConfig)
    assert cfg.save_steps <= 10 and cfg.save_total_limit is not None and cfg.save_total_limit >= 2

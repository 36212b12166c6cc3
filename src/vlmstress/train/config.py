"""Typed training configs (pydantic): a YAML file with an unknown key or a bad value is a UsageError."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlmstress.errors import UsageError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Phase(Strict):
    """A stretch of the curriculum: until `until` (a fraction of max_steps) draw examples by `mix`."""

    until: float = Field(gt=0, le=1)
    mix: dict[str, float]
    shuffle_options: bool = True


class SFTConfig(Strict):
    kind: str = "sft"
    size: str = "default"
    seed: int = 0
    max_steps: int = 6000
    batch_size: int = 32
    lr: float = 2e-3
    min_lr: float = 2e-4
    vision_lr_mult: float = 3.0
    warmup_steps: int = 100
    weight_decay: float = 0.01
    pool: int = 20000
    eval_every: int = 500
    eval_samples: int = 200
    out: str = "runs/sft-tiny"
    curriculum: list[Phase]


def load_config(path: str | Path, cls: type[BaseModel], **overrides) -> BaseModel:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"config file {path} must hold a mapping of settings")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UsageError(f"config {path}: {where}: {err['msg']}") from None

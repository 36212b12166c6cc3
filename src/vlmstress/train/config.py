"""Typed training configs (pydantic): a YAML file with an unknown key or a bad value is a UsageError."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    max_steps: int = 3000
    batch_size: int = 32
    # each batch runs as this many micro-batches of similar length: less padding, the same loss
    length_groups: int = Field(default=3, gt=0)
    # the copy steps (an option line, an object found by its shape) do not form at 2e-3
    # (configs/sft-tiny.yaml, docs/tiny-model.md)
    lr: float = 1e-3
    min_lr: float = 1e-4
    vision_lr_mult: float = 1.0
    vision_pretrain_steps: int = 0
    vision_pretrain_lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    pool: int = 20000
    eval_every: int = 500
    eval_samples: int = 200
    out: str = "runs/sft-tiny"
    # start from this checkpoint folder (its tokenizer and weights; "tiny": the shipped weights)
    # instead of a new model; the vision warm-up runs only if vision_pretrain_steps says so
    init: str | None = None
    # share of the pool's (and the validation log's) colour questions drawn hard: synth's difficulty axis
    hard_share: float = Field(default=0.0, ge=0, le=1)
    # share of caption examples whose caption argues for a wrong option (the target stays the truth)
    caption_wrong: float = Field(default=0.0, ge=0, le=1)
    # torch's CPU threads (None: torch's default); one is fastest on a busy 2-core machine
    torch_threads: int | None = Field(default=None, gt=0)
    # The model's own reasoning (`own` examples, train/sft.py own_examples): every `own_refresh`
    # steps the model being trained writes its greedy reasoning for `own_pool` training questions
    # (`own_caption` of them with a caption, wrong at the `caption_wrong` rate), and the answer
    # letter after that reasoning is supervised with the truth. The letter then learns how often
    # the model's own reasoning is right where it stands, which is a calibrated confidence.
    own_refresh: int = Field(default=300, gt=0)
    own_pool: int = Field(default=3000, gt=0)
    own_caption: float = Field(default=0.0, ge=0, le=1)
    # true: the answer letter after reasoning the model did not write itself (qa, caption, think,
    # recover examples: always-correct reasoning) carries no loss, so the letter's confidence is
    # learnt from the model's own reasoning only (a correct reasoning written by the recipe would
    # teach it that reasoning is never wrong)
    letter_from_own: bool = False
    curriculum: list[Phase]


def load_config(path: str | Path, cls: type[BaseModel], **overrides) -> BaseModel:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"config {path} is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"config file {path} must hold a mapping of settings")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return validated(cls, raw, f"config {path}")


def validated(cls: type[BaseModel], raw: dict, name: str = "config") -> BaseModel:
    """`raw` as a `cls`, or a UsageError naming the first bad field (`name: field: why`)."""
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UsageError(f"{name}: {where}: {err['msg']}") from None


# ---------------------------------------------------------------------------------------------------
# GRPO (named GRPORunConfig so as not to clash with trl.GRPOConfig, which it is turned into)


class DataSource(Strict):
    """One training source: `synth` (train split), `sat`, `pixmo-count` (see train/data.py), or one a
    user registered (register_source). The fields set are passed to the source, which may not take
    them all (families is synth's, download_images pixmo-count's): one it does not take is refused."""

    source: str
    n: int | None = Field(default=None, gt=0)  # the first n rows; None: all (synth: 2000)
    split: str | None = None  # default: synth train, sat static, pixmo-count train
    data_dir: str | None = None  # a local copy laid out as the hub repository; else the hub
    hub_id: str | None = None  # default: array/SAT, allenai/pixmo-count
    download_images: bool = False  # pixmo-count: fetch image URLs not found locally
    # synth: only these question families, in turn (e.g. [count, twohop], where the tiny model errs)
    families: list[str] | None = Field(default=None, min_length=1)

    def fields(self) -> dict[str, Any]:
        """The fields this entry sets, for its source: those at their defaults are left out."""
        return {
            name: value
            for name, value in self
            if name != "source" and value != type(self).model_fields[name].default
        }

    @field_validator("source")
    @classmethod
    def _registered(cls, source: str) -> str:
        from vlmstress.train.data import SOURCES

        SOURCES.lookup(source)  # a UsageError (a ValueError): unknown training source 'x' (known: ...)
        return source

    @model_validator(mode="after")
    def _source_takes_the_fields(self) -> DataSource:
        from vlmstress.train.data import source_error

        why = source_error(self.source, self.fields())
        if why:
            raise ValueError(why)
        if self.source == "synth" and self.families is not None:
            from vlmstress.data.synth import check_families

            check_families(self.families)
        return self


class RewardTerm(Strict):
    """weight x fn, optionally gated by the judge: faithful(fn) = fn x 1[judge says consistent]."""

    fn: str  # a registered reward (train/rewards.py: format, accuracy, a user's) or module:function
    weight: float
    faithful: bool = False

    @field_validator("fn")
    @classmethod
    def _names_a_reward(cls, fn: str) -> str:
        from vlmstress.train.rewards import resolve_reward

        resolve_reward(fn)  # a UsageError (a ValueError) names what is wrong
        return fn


class DynamicsSettings(Strict):
    """The policy's evaluation during training (train/dynamics.py)."""

    eval_every: int = Field(default=250, gt=0)
    data: str = "synth"  # synth: the held-out split "val"; or any Data SPEC of `vlmstress eval`
    data_dir: str | None = None  # for a benchmark Data SPEC, as `vlmstress eval --data-dir`
    n: int = Field(default=100, gt=0)  # samples evaluated
    variants: list[str] = Field(
        default_factory=lambda: ["base", "stop_think", "wrong_think", "wrong_caption"], min_length=1
    )
    judges: list[str] = Field(default_factory=lambda: ["rule"])
    batch_size: int = Field(default=16, gt=0)
    max_new_tokens: int = Field(default=96, gt=0)
    at_start: bool = True  # also evaluate the initial policy (step 0)

    @field_validator("variants")
    @classmethod
    def _registered_variants(cls, names: list[str]) -> list[str]:
        from vlmstress.perturb import VARIANTS

        VARIANTS.require(names)  # a UsageError (a ValueError): unknown variant 'x' (known: ...)
        return names

    @field_validator("judges")
    @classmethod
    def _judge_specs(cls, specs: list[str]) -> list[str]:
        for spec in specs:
            _check_judge(spec)
        return specs


# Qwen2.5-VL's language-model projections (attention and MLP): the usual LoRA targets of its LLM.
QWEN_LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraSettings(Strict):
    """LoRA adapters (peft) trained in place of the whole policy: GRPOTrainer's `peft_config`. With
    beta > 0 TRL's reference model is the same model with the adapters off, so no second copy."""

    r: int = Field(default=16, gt=0)  # the adapters' rank
    alpha: int = Field(default=32, gt=0)  # scale alpha / r of the adapters' update
    dropout: float = Field(default=0.05, ge=0, lt=1)
    # module names (a name's last part) that get adapters; the default is Qwen2.5-VL's language model
    target_modules: list[str] = Field(default_factory=lambda: list(QWEN_LM_PROJECTIONS), min_length=1)
    # false: the vision tower stays frozen, even where its layers share those names (Qwen2.5-VL's
    # vision MLP has gate_proj / up_proj / down_proj too); true: they get adapters as well
    vision: bool = False
    # QLoRA: the frozen base loads quantized by bitsandbytes (CUDA only) and the adapters train in
    # bf16; the final merged policy is saved unquantized, in `dtype` (train/grpo.py save_final)
    quantization: Literal["4bit", "8bit"] | None = None


ReportTo = Literal["tensorboard", "wandb", "none"]


class GRPORunConfig(Strict):
    """`vlmstress train grpo --config FILE.yaml`: what to train, on what, rewarded how.

    The TRL settings below are GRPOConfig's own names; `trl` passes any other GRPOConfig field
    through (checked against GRPOConfig when the trainer is built).
    """

    kind: Literal["grpo"] = "grpo"
    init: str = "tiny"  # model SPEC: tiny | tiny:DIR | hf:ID_OR_PATH
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    seed: int = 0  # training randomness: sampling, data order, which prompts are augmented
    seeds: list[int] | None = None  # a sweep: one run per seed under out/seed-S
    data_seed: int = 0  # the data itself (synth pool, option order, held-out set): shared by a sweep
    out: str = "runs/grpo-tiny"
    resume: bool = True  # continue from the last checkpoint in out, if any
    torch_threads: int | None = Field(default=None, gt=0)
    template: str = "vlmstress"
    # The system turn of every training and dynamics prompt; None: the init model's documented one
    # (models/system_prompts.py), "" none. Train with the prompt the model is evaluated with.
    system: str | None = None
    data: list[DataSource] = Field(default_factory=lambda: [DataSource(source="synth", n=2000)], min_length=1)
    rewards: list[RewardTerm] = Field(
        default_factory=lambda: [RewardTerm(fn="format", weight=0.1), RewardTerm(fn="accuracy", weight=1.0)],
        min_length=1,
    )
    judge: str = "rule"  # the judge of faithful reward terms: a judge SPEC (rule, a user's, a model SPEC)
    # Probability that a training prompt becomes each augmentation kind (train/augment.py; the rest
    # stay base): the shipped perturbations and any a user registered. A kind left out takes its
    # default rate (the shipped ones 0.1); the rates sum to at most 1.
    augment: dict[str, float] = Field(default_factory=lambda: _default_rates())
    dynamics: DynamicsSettings = Field(default_factory=DynamicsSettings)
    # LoRA / QLoRA instead of full fine-tuning (`pip install -e ".[lora]"`); None: every weight trains
    lora: LoraSettings | None = None
    # The image processor's resolution caps (pixels per image) for training and dynamics prompts, as
    # evaluation's processor_kwargs; None: the init checkpoint's own. Saved with the final policy.
    max_pixels: int | None = Field(default=None, gt=0)
    min_pixels: int | None = Field(default=None, gt=0)
    # Where the Trainer's logs go (GRPOConfig.report_to): tensorboard (out/runs), wandb (its WANDB_*
    # variables come from the environment; never put a key here), none; one name or a list.
    report_to: list[ReportTo] = Field(default_factory=lambda: ["tensorboard"], min_length=1)

    # trl.GRPOConfig settings (TRL counts per_device_train_batch_size in completions, not prompts)
    max_steps: int = Field(default=1000, gt=0)
    num_generations: int = Field(default=8, ge=2)
    per_device_train_batch_size: int = Field(default=8, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=1e-6, gt=0)
    lr_scheduler_type: str = "constant"
    # linear warmup: a whole number of steps, or a fraction in [0, 1) of max_steps (as transformers)
    warmup_steps: float = Field(default=0, ge=0)
    beta: float = Field(default=0.0, ge=0)
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = "grpo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    epsilon: float = Field(default=0.2, gt=0)
    max_completion_length: int = Field(default=128, gt=0)
    temperature: float = Field(default=1.0, gt=0)
    bf16: bool = False
    gradient_checkpointing: bool = False
    save_steps: int = Field(default=250, gt=0)
    save_total_limit: int | None = Field(default=2, gt=0)
    logging_steps: int = Field(default=10, gt=0)
    # Generate and score each batch in at most this many groups of rows of similar length, so short
    # rows are not padded to the longest (train/length_groups.py); 1 = TRL's single padded batch.
    length_groups: int = Field(default=4, ge=1)

    # Generation with vLLM (`pip install -e ".[vllm]"`; GRPOConfig's names and defaults): `colocate`
    # runs a vLLM engine inside each training process, on its GPU; `server` sends the prompts to a
    # separate server (`trl vllm-serve`, docs/scaling.md) and pushes the new weights to it each step.
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_model_impl: Literal["vllm", "transformers"] = "vllm"
    vllm_max_model_length: int | None = Field(default=None, gt=0)  # None: the model config's
    # colocate only (a server takes these on its own command line)
    vllm_gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1)
    vllm_tensor_parallel_size: int = Field(default=1, ge=1)
    vllm_enable_sleep_mode: bool = False  # free vLLM's weights and cache during the optimizer step
    # server only; a base URL wins over host and port
    vllm_server_base_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+")
    vllm_server_host: str = Field(default="0.0.0.0", min_length=1)
    vllm_server_port: int = Field(default=8000, ge=1, le=65535)
    vllm_server_timeout: float = Field(default=240.0, gt=0)  # seconds to wait for the server to be up
    vllm_group_port: int = Field(default=51216, ge=1, le=65535)  # the weight-update group's port

    trl: dict[str, Any] = Field(default_factory=dict)

    @field_validator("judge")
    @classmethod
    def _judge_spec(cls, spec: str) -> str:
        _check_judge(spec)
        return spec

    @field_validator("augment", mode="before")
    @classmethod
    def _registered_kinds(cls, value: Any) -> Any:
        from vlmstress.train.augment import AUGMENTATIONS

        if value is None:
            return _default_rates()
        if not isinstance(value, dict):
            return value  # pydantic says what it expected
        AUGMENTATIONS.require(value)  # a UsageError (a ValueError): unknown augmentation kind 'x'
        # The kinds named, and those with a default rate, in registration order: the draw walks the
        # rates in order, so the order of a config's keys must not change which prompts are augmented.
        defaults = _default_rates()
        return {
            name: value.get(name, defaults.get(name))
            for name in AUGMENTATIONS
            if name in {**defaults, **value}
        }

    @field_validator("augment")
    @classmethod
    def _rates_are_probabilities(cls, rates: dict[str, float]) -> dict[str, float]:
        for name, p in rates.items():
            if not 0 <= p <= 1:
                raise ValueError(f"the rate of {name} must be in [0, 1], got {p}")
        if sum(rates.values()) > 1 + 1e-9:
            raise ValueError("augmentation rates must sum to at most 1")
        return rates

    @model_validator(mode="after")
    def _warmup_is_steps_or_a_fraction(self) -> GRPORunConfig:
        if self.warmup_steps >= 1:
            if not float(self.warmup_steps).is_integer():
                raise ValueError("warmup_steps must be a whole number of steps or a fraction below 1")
            self.warmup_steps = int(self.warmup_steps)
        return self

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_name_or_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _report_to_none_alone(self) -> GRPORunConfig:
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ValueError("report_to: none cannot be combined with other integrations")
        return self

    @model_validator(mode="after")
    def _pixel_caps_in_order(self) -> GRPORunConfig:
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} is above max_pixels {self.max_pixels}")
        return self

    @model_validator(mode="after")
    def _vllm_settings_fit_the_mode(self) -> GRPORunConfig:
        # TRL ignores the other mode's settings without a word; one set here is a config mistake
        # (e.g. a server's memory share belongs on the server's command line).
        ignored = VLLM_SERVER_ONLY if self.vllm_mode == "colocate" else VLLM_COLOCATE_ONLY
        wrong = sorted(ignored & self.model_fields_set)
        if wrong:
            raise ValueError(f"{', '.join(wrong)} has no effect with vllm_mode {self.vllm_mode}")
        return self


VLLM_COLOCATE_ONLY = frozenset(
    {"vllm_gpu_memory_utilization", "vllm_tensor_parallel_size", "vllm_enable_sleep_mode"}
)
VLLM_SERVER_ONLY = frozenset(
    {"vllm_server_base_url", "vllm_server_host", "vllm_server_port", "vllm_server_timeout", "vllm_group_port"}
)


def _default_rates() -> dict[str, float]:
    from vlmstress.train.augment import default_rates

    return default_rates()


def _check_judge(spec: str) -> None:
    from vlmstress.models.registry import check_judge_spec

    check_judge_spec(spec)  # a UsageError (a ValueError) naming what is wrong, before anything loads

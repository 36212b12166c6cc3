"""`vlmstress train grpo`: TRL's GRPOTrainer, configured with our rewards, data, augmentation and
dynamics callback. Nothing of GRPO itself lives here: the trainer is TRL's, its batched model calls
cut into length groups (train/length_groups.py).

What this module adds around the trainer:
- the policy from a model SPEC (`tiny`, `tiny:DIR`, `hf:ID_OR_PATH`) with its processor, whose chat
  template is made prefill-aware (train/augment.py explains why TRL needs that for think prefills);
- the training rows (train/data.py sources -> train/augment.py prompts) as a `datasets.Dataset`
  with `prompt` (conversational), `images` and the reward columns;
- the reward functions and weights (train/rewards.py), passed as `reward_funcs` / `reward_weights`;
- the dynamics callback (train/dynamics.py);
- checkpoints every `save_steps` (safetensors weights; optimizer, scheduler and RNG state as the
  Trainer writes them and reloads them with `weights_only=True`; the training arguments as JSON in
  place of the Trainer's pickled training_args.bin), and automatic resume from the newest complete
  one in the output folder; one trainer per folder (train_lock); the final policy in `out/final`,
  loadable as `tiny:out/final` or `hf:out/final`;
- optionally LoRA / QLoRA (peft, `lora:` in the config): TRL wraps the policy, checkpoints hold the
  adapter alone (adapter_model.safetensors), and `out/final` holds the adapter merged into the
  unquantized base, so it evaluates as any other policy (the adapter itself in `out/final/adapter`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlmstress.errors import UsageError
from vlmstress.train import sharding
from vlmstress.train.config import GRPORunConfig, load_config

Log = Callable[[str], None]


def load_policy(
    init: str,
    dtype: str = "auto",
    *,
    weights_from: str | None = None,
    quantization: str | None = None,
    pixel_caps: dict[str, int] | None = None,
) -> tuple[Any, Any]:
    """(model, processor) of a model SPEC; the processor pads left and continues prefills.

    `quantization` (4bit, 8bit) loads the weights through bitsandbytes for QLoRA; `pixel_caps`
    (max_pixels, min_pixels) bound the image resolution, as evaluation's hf processor_kwargs do.

    `weights_from` (a Trainer checkpoint folder) loads the weights from there instead. This is how a
    run resumes: transformers 5.24's Trainer reloads checkpoint weights with a bare
    `load_state_dict(strict=False)`, which skips the key conversion Qwen2.5-VL checkpoints need
    (saved as `model.layers.*`, loaded as `model.language_model.layers.*`) and so silently keeps
    the initial weights (transformers#43701). `from_pretrained` converts the keys; the Trainer still
    restores optimizer, scheduler, RNG and step (its missing-keys warning is silenced, train_grpo).
    """
    from transformers import AutoModelForImageTextToText

    from vlmstress.models.hf import load_processor
    from vlmstress.train.augment import install_prefill_template

    path, torch_dtype = init_path(init), _torch_dtype(dtype)
    extra = _quantized_loading(quantization, torch_dtype) if quantization else {}
    model = AutoModelForImageTextToText.from_pretrained(weights_from or path, dtype=torch_dtype, **extra)
    # TRL builds the KL reference model (beta > 0) from this name: it must stay the initial policy.
    model.config._name_or_path = path
    processor = cap_pixels(load_processor(path), **(pixel_caps or {}))
    processor.tokenizer.padding_side = "left"
    return model, install_prefill_template(processor)


def cap_pixels(processor: Any, max_pixels: int | None = None, min_pixels: int | None = None) -> Any:
    """`processor` with its images resized to at most `max_pixels` and at least `min_pixels` pixels.

    Qwen2-VL-family image processors hold the caps as size.longest_edge / size.shortest_edge; set
    there, they are saved with the policy. (Given to from_pretrained as `max_pixels=`, the way the
    hf backend passes processor_kwargs, transformers 5 keeps them as a per-call argument and warns on
    every call that the form is deprecated.)"""
    if max_pixels is None and min_pixels is None:
        return processor
    image_processor = processor.image_processor
    size = getattr(image_processor, "size", None)
    if not dataclasses.is_dataclass(size) or not hasattr(size, "longest_edge"):
        raise UsageError(f"max_pixels / min_pixels: {type(image_processor).__name__} takes no pixel caps")
    longest = size.longest_edge if max_pixels is None else max_pixels
    shortest = size.shortest_edge if min_pixels is None else min_pixels
    if shortest is not None and longest is not None and shortest > longest:
        raise UsageError(f"min_pixels {shortest} is above max_pixels {longest} (one set by the checkpoint)")
    image_processor.size = dataclasses.replace(size, longest_edge=longest, shortest_edge=shortest)
    return processor


def init_path(init: str) -> str:
    """The folder or hub id a GRPO init SPEC loads from (a UsageError for any other SPEC)."""
    from vlmstress.models.registry import parse_spec
    from vlmstress.models.tiny import ASSET_DIR

    kind, target = parse_spec(init)
    if kind == "tiny":
        path = Path(target).expanduser() if target else ASSET_DIR
        if not (path / "config.json").is_file():
            hint = "the shipped tiny weights are not installed" if not target else "not a checkpoint folder"
            raise UsageError(f"init {init!r}: {hint} ({path} has no config.json)")
        return str(path)
    if kind == "hf":
        return str(target)
    raise UsageError(f"init must be tiny, tiny:DIR or hf:ID_OR_PATH, got {init!r}")


def _torch_dtype(dtype: str) -> Any:
    import torch

    return dtype if dtype == "auto" else getattr(torch, dtype)


def _quantized_loading(quantization: str, torch_dtype: Any) -> dict[str, Any]:
    """from_pretrained's arguments for a QLoRA base: NF4 with double quantization (the QLoRA paper's
    choice) computing in bf16 unless the config says float16, or LLM.int8; each process's copy is
    placed on its own GPU at load (bitsandbytes cannot be moved there afterwards)."""
    import torch
    from accelerate import PartialState
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        compute = torch.float16 if torch_dtype == torch.float16 else torch.bfloat16
        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    else:
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": bnb, "device_map": {"": PartialState().local_process_index}}


# Module names of vision towers (Qwen2-VL / Qwen2.5-VL: visual; LLaVA-style: vision_tower; Idefics3,
# SmolVLM: vision_model): no adapter goes there unless lora.vision says so.
VISION_TOWERS = r".*\b(visual|vision_tower|vision_model)\b.*"


def peft_config(cfg: GRPORunConfig) -> Any:
    """The peft.LoraConfig of `cfg.lora` (None: full fine-tuning), given to GRPOTrainer."""
    if cfg.lora is None:
        return None
    from peft import LoraConfig

    lora = cfg.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        exclude_modules=None if lora.vision else VISION_TOWERS,
        task_type="CAUSAL_LM",
    )


def check_runtime(cfg: GRPORunConfig) -> None:
    """What the config asks of this machine and its packages, checked before anything is created:
    peft for LoRA, CUDA and bitsandbytes for QLoRA, wandb when it is reported to."""
    import importlib.util

    import torch

    if cfg.lora is not None and importlib.util.find_spec("peft") is None:
        raise UsageError("lora needs peft installed: pip install 'vlmstress[lora]'")
    quantization = cfg.lora.quantization if cfg.lora else None
    if quantization and not torch.cuda.is_available():
        raise UsageError(
            f"lora.quantization {quantization} needs a CUDA GPU (bitsandbytes); this torch sees none: "
            "drop it to train LoRA on an unquantized base"
        )
    if quantization and importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(f"lora.quantization {quantization} needs bitsandbytes: pip install bitsandbytes")
    if "wandb" in cfg.report_to and importlib.util.find_spec("wandb") is None:
        raise UsageError("report_to wandb needs wandb installed: pip install wandb (or use tensorboard)")


def reward_functions(cfg: GRPORunConfig) -> tuple[list[Callable], list[float]]:
    """The configured reward terms as TRL reward functions, and their weights."""
    from vlmstress.train.rewards import faithful, resolve_reward

    judge = None
    if any(t.faithful for t in cfg.rewards):
        from vlmstress.models.registry import load_judge

        judge = load_judge(cfg.judge)  # one judge shared by every faithful term
    terms = [(resolve_reward(t.fn), t.faithful) for t in cfg.rewards]
    funcs = [faithful(fn, judge) if gated else fn for fn, gated in terms]
    names = [f.__name__ for f in funcs]
    if len(set(names)) != len(names):
        raise UsageError(f"rewards: each reward term may appear once (got {', '.join(names)})")
    return funcs, [t.weight for t in cfg.rewards]


# GRPORunConfig fields that are trl.GRPOConfig fields of the same name and meaning.
_TRL_FIELDS = (
    "max_steps",
    "num_generations",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "beta",
    "loss_type",
    "scale_rewards",
    "epsilon",
    "max_completion_length",
    "temperature",
    "bf16",
    "gradient_checkpointing",
    "use_vllm",
    "vllm_mode",
    "vllm_model_impl",
    "vllm_max_model_length",
    "vllm_gpu_memory_utilization",
    "vllm_tensor_parallel_size",
    "vllm_enable_sleep_mode",
    "vllm_server_base_url",
    "vllm_server_host",
    "vllm_server_port",
    "vllm_server_timeout",
    "vllm_group_port",
    "save_steps",
    "save_total_limit",
    "logging_steps",
)


def trl_config(cfg: GRPORunConfig, *, seed: int, out: Path, reward_weights: Sequence[float]):
    """The trl.GRPOConfig of a run; `cfg.trl` entries override or extend ours."""
    import torch
    from trl import GRPOConfig

    from vlmstress.shard import world_size_from_env

    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    unknown = sorted(set(cfg.trl) - known)
    if unknown:
        raise UsageError(f"trl: unknown GRPOConfig field(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {name: getattr(cfg, name) for name in _TRL_FIELDS}
    if "activation_checkpointing" in known:  # transformers 5 renamed it; the old name only warns
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
    kwargs.update(
        output_dir=str(out),
        seed=seed,
        data_seed=seed,
        reward_weights=list(reward_weights),
        save_strategy="steps",
        report_to=list(cfg.report_to),
        remove_unused_columns=False,
        # fp16 is never on by default here: GRPOConfig turns bf16 on unless told otherwise
        fp16=False,
    )
    if world_size_from_env() > 1 and not torch.cuda.is_available():
        # Launched processes on a machine without GPUs train together only when told to use the CPU
        # (accelerate then joins them over gloo); else each would train alone, all into one `out`.
        kwargs["use_cpu"] = True
    kwargs.update(cfg.trl)
    try:
        return GRPOConfig(**kwargs)
    except (ValueError, TypeError) as exc:  # TRL's own consistency checks (batch vs generations, ...)
        raise UsageError(f"GRPO settings: {' '.join(str(exc).split())}") from None


def held_out_samples(cfg: GRPORunConfig) -> list:
    """What the dynamics callback evaluates: synth's held-out `val` split (disjoint from the train
    and test streams), or the first `n` samples of any evaluation Data SPEC."""
    dyn = cfg.dynamics
    if dyn.data.strip().lower() == "synth":
        from vlmstress.data import synth

        return synth.generate(dyn.n, seed=cfg.data_seed, split="val")
    from vlmstress.data.loading import load_data

    samples, _ = load_data(dyn.data, data_dir=dyn.data_dir, limit=dyn.n, seed=cfg.data_seed)
    return samples


def build_trainer(
    cfg: GRPORunConfig,
    *,
    seed: int,
    out: Path,
    log: Log = print,
    callbacks: Sequence = (),
    resume: str | None = None,
):
    """(GRPOTrainer, DynamicsCallback) for one run of `cfg` with training seed `seed`; `resume` is the
    checkpoint folder the run will resume from (its weights are loaded here, see load_policy)."""
    from transformers import set_seed

    from vlmstress.models.system_prompts import resolve_system
    from vlmstress.train.augment import build_dataset
    from vlmstress.train.data import load_training_samples
    from vlmstress.train.dynamics import DynamicsCallback

    # The cheap checks first (TRL's own included), so a bad setting fails before data and weights load.
    check_runtime(cfg)
    funcs, weights = reward_functions(cfg)
    args = trl_config(cfg, seed=seed, out=out, reward_weights=weights)
    set_seed(seed)
    model, processor = load_policy(
        cfg.init,
        cfg.dtype,
        # a LoRA checkpoint holds the adapter alone: the base loads from init, and the Trainer's
        # resume loads the adapter (peft's own names, which need none of the conversion above)
        weights_from=resume if cfg.lora is None else None,
        quantization=cfg.lora.quantization if cfg.lora else None,
        pixel_caps=pixel_caps(cfg),
    )
    samples = load_training_samples(cfg.data, cfg.data_seed, log=log)
    system = resolve_system(cfg.init, cfg.system)
    dataset = build_dataset(samples, seed, cfg.augment, cfg.template, system)
    counts = Counter(dataset["variant"])
    log(f"{len(dataset)} training prompts: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items())))
    dyn = cfg.dynamics
    dynamics = DynamicsCallback(
        processor,
        held_out_samples(cfg),
        data_name=dyn.data if dyn.data.strip().lower() != "synth" else None,
        out=out,
        seed=seed,
        data_seed=cfg.data_seed,
        variants=dyn.variants,
        eval_every=dyn.eval_every,
        judges=dyn.judges,
        reward_funcs=funcs,
        reward_weights=weights,
        batch_size=dyn.batch_size,
        max_new_tokens=dyn.max_new_tokens,
        template=cfg.template,
        system=system,
        at_start=dyn.at_start,
        log=log,
    )
    trainer = _trainer_class()(
        base_model=base_model_name(cfg.init),
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[dynamics, _args_as_json_callback(), *callbacks],
        peft_config=peft_config(cfg),
        length_groups=cfg.length_groups,
    )
    dynamics.trainer = trainer
    return trainer, dynamics


def pixel_caps(cfg: GRPORunConfig) -> dict[str, int]:
    """The processor's resolution caps the config sets (none: the checkpoint's own)."""
    caps = {"max_pixels": cfg.max_pixels, "min_pixels": cfg.min_pixels}
    return {k: v for k, v in caps.items() if v is not None}


def base_model_name(init: str) -> str:
    """What a run's model card calls its base model: the hub id of `hf:ID`, else the init SPEC."""
    from vlmstress.models.registry import parse_spec

    kind, target = parse_spec(init)
    return target if kind == "hf" and target and not Path(target).expanduser().is_dir() else init


def _trainer_class() -> type:
    # Built on first use: importing the trainer imports TRL, which the config checks do not need.
    from vlmstress.train.length_groups import LengthGroupedGRPOTrainer

    class Trainer(LengthGroupedGRPOTrainer):
        """Names the base model in the model card (README.md) TRL writes at each checkpoint."""

        def __init__(self, *args: Any, base_model: str, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.base_model = base_model

        def create_model_card(self, *args: Any, **kwargs: Any) -> None:
            # TRL reads the base model from config._name_or_path and drops it when that is a local
            # folder (the tiny model, tiny:DIR, hf:DIR): the card would say "a fine-tuned version of
            # [None]". The name is swapped in for the card alone; the config is saved as it was.
            config = self.model.config
            path, config._name_or_path = config._name_or_path, self.base_model
            try:
                super().create_model_card(*args, **kwargs)
            finally:
                config._name_or_path = path

    return Trainer


def _args_as_json_callback():
    """A callback that replaces each checkpoint's training_args.bin (the Trainer pickles its
    arguments there, and only a full unpickle can read it) with training_args.json. Nothing reads
    the .bin back: a resume takes its arguments from the config, its state from trainer_state.json."""
    from transformers import TrainerCallback
    from transformers.trainer import TRAINING_ARGS_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class ArgsAsJson(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
                (folder / TRAINING_ARGS_NAME).unlink(missing_ok=True)
                (folder / "training_args.json").write_text(args.to_json_string())

    return ArgsAsJson()


class _ResumeKeyWarnings(logging.Filter):
    """Drops the Trainer's missing/unexpected-keys warnings on resume: it lists every weight of the
    model (transformers#43701, see load_policy), which load_policy has already loaded correctly."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(
            ("There were missing keys in the checkpoint", "There were unexpected keys in the checkpoint")
        )


def _quiet_known_noise() -> None:
    """Silence two warnings every GRPO run repeats that say nothing about the run (a demo printed
    them ~30 times): the DataLoader's pin_memory default on a machine without an accelerator (it
    just does not pin), and transformers' deprecation of `is_gradient_checkpointing`, which TRL
    reads, not our code. Matched by message and category, so any other warning still shows."""
    warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true", category=UserWarning)
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )


_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def complete_checkpoint(folder: Path) -> bool:
    """The Trainer writes trainer_state.json last (after weights, optimizer, scheduler and RNG
    state): a folder without a readable one was cut off by a kill and cannot be resumed from."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and isinstance(state.get("global_step"), int)


def last_checkpoint(out: Path, log: Log = lambda _: None) -> str | None:
    """The newest complete `checkpoint-N` folder in `out`; newer incomplete ones are skipped (and
    said so), since transformers' get_last_checkpoint would pick them and every rerun would fail."""
    out = Path(out)
    if not out.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in out.iterdir() if (m := _CHECKPOINT.fullmatch(p.name)) and p.is_dir()),
        reverse=True,
    )
    for _, folder in found:
        if complete_checkpoint(folder):
            return str(folder)
        log(f"skipping incomplete {folder} (no readable trainer_state.json: the run was killed while saving)")
    return None


@contextmanager
def train_lock(out: Path) -> Iterator[None]:
    """One trainer per folder: a second `train grpo` on a held `out` is refused (UsageError) before
    it loads anything, instead of both rewriting dynamics.jsonl and the checkpoints. An flock, so it
    dies with its holder. Each launched process locks its own rank's file: a second launch is then
    refused on every rank, and the ranks of one launch do not refuse each other."""
    from vlmstress.runlog import flock_or_refuse
    from vlmstress.shard import rank_from_env

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rank = rank_from_env()
    with (out / (".lock" if rank == 0 else f".lock-rank-{rank}")).open("w") as f:
        flock_or_refuse(
            f, f"another vlmstress process is training in {out}; wait for it or use another --out"
        )
        yield


def train_grpo(
    cfg: GRPORunConfig,
    *,
    seed: int | None = None,
    out: str | Path | None = None,
    log: Log = print,
    callbacks: Sequence = (),
) -> Path:
    """One GRPO run (resumed from the newest complete checkpoint in `out` if any), holding `out`
    against a second trainer; returns the final folder."""
    import torch

    from vlmstress.perturb import TEMPLATES, resolve_variants

    seed = cfg.seed if seed is None else seed
    out = Path(out or cfg.out)
    check_runtime(cfg)
    TEMPLATES.lookup(cfg.template)
    resolve_variants(",".join(cfg.dynamics.variants))
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    with train_lock(out):
        return _train_locked(cfg, seed=seed, out=out, log=log, callbacks=callbacks)


def _train_locked(cfg: GRPORunConfig, *, seed: int, out: Path, log: Log, callbacks: Sequence) -> Path:
    resume = last_checkpoint(out, log) if cfg.resume else None
    # Said either way: a run that silently started over after a kill looks like a resumed one.
    if resume:
        step = json.loads((Path(resume) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
        log(f"step {step}: resuming from {resume}")
    else:
        why = "resume is off" if not cfg.resume else f"no complete checkpoint in {out}"
        log(f"starting from scratch (step 0): {why}")
    trainer, _ = build_trainer(cfg, seed=seed, out=out, log=log, callbacks=callbacks, resume=resume)
    # Launched on several processes, each runs this function; the main one alone writes our files.
    main_process = trainer.is_world_process_zero()
    if main_process:
        resolved = {**cfg.model_dump(), "seed": seed, "seeds": None, "out": str(out)}
        (out / "grpo_config.json").write_text(json.dumps(resolved, indent=2))
    trainer_log = logging.getLogger("transformers.trainer")
    quiet = _ResumeKeyWarnings()
    if resume:
        trainer_log.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            _quiet_known_noise()
            trainer.train(resume_from_checkpoint=resume)
    finally:
        trainer_log.removeFilter(quiet)
    final, accelerator = out / "final", trainer.accelerator
    # ZeRO-3 and FSDP keep a slice of each weight per process: all of them gather the whole.
    state_dict = (
        accelerator.get_state_dict(trainer.model_wrapped) if sharding.weights_sharded(accelerator) else None
    )
    if main_process:
        if cfg.lora is None:
            save_policy(trainer.model, trainer.processing_class, final, state_dict=state_dict)
        else:
            save_merged_policy(cfg, trainer.model, trainer.processing_class, final, state_dict=state_dict)
        log(f"final policy in {final}; dynamics in {out / 'dynamics.jsonl'}")
    accelerator.wait_for_everyone()  # no process returns before the policy is on disk
    return final


def save_policy(model: Any, processor: Any, out: Path, *, state_dict: dict | None = None) -> Path:
    """The policy as a checkpoint folder that loads as `tiny:DIR` / `hf:DIR`: safetensors weights and
    the processor. Without a video processor (no torchvision) it is saved as its parts, tokenizer and
    image processor, since a saved processor_config.json then names a video processor that cannot
    be loaded back; with one, whole. `state_dict`: the gathered weights of a ZeRO-3 / FSDP run."""
    model.save_pretrained(out, state_dict=state_dict)
    if getattr(processor, "video_processor", None) is not None:
        processor.save_pretrained(out)
    else:
        processor.tokenizer.save_pretrained(out)
        processor.image_processor.save_pretrained(out)
    return out


def save_merged_policy(
    cfg: GRPORunConfig, model: Any, processor: Any, out: Path, *, state_dict: dict | None = None
) -> Path:
    """A LoRA run's final policy: the adapter in out/adapter (adapter_model.safetensors), and in
    `out` the base with the adapter merged, a plain checkpoint that `tiny:DIR` / `hf:DIR` load with
    no peft. The base is loaded again, unquantized and in `dtype`: merging into a QLoRA run's 4-bit
    base would round the update away and leave weights only bitsandbytes (on CUDA) can read."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    adapter = out / "adapter"
    model.save_pretrained(adapter, state_dict=state_dict)  # peft writes only the adapter's weights
    base = AutoModelForImageTextToText.from_pretrained(init_path(cfg.init), dtype=_torch_dtype(cfg.dtype))
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    # TRL set the trained model's pad token in its generation config: keep it, as a full run's final does
    merged.generation_config = model.get_base_model().generation_config
    return save_policy(merged, processor, out)


def parse_seeds(text: str | None) -> list[int] | None:
    """`--seeds 0,1,2` -> [0, 1, 2]; a UsageError for anything else."""
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be whole numbers separated by commas, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds needs distinct seeds, got {text!r}")
    return seeds


def run_grpo_command(args) -> int:
    """`vlmstress train grpo --config F [--max-steps N] [--seed S | --seeds 0,1,2] [--out DIR]`.

    Seeds: `--seeds` runs a sweep; else `--seed` runs that one seed; else the config's `seeds` list
    (a sweep) or its `seed`. A sweep writes one run per seed to OUT/seed-S.
    """
    cfg = load_config(args.config, GRPORunConfig, max_steps=args.max_steps, seed=args.seed, out=args.out)
    assert isinstance(cfg, GRPORunConfig)
    seeds = parse_seeds(getattr(args, "seeds", None))
    if seeds is None and args.seed is None:
        seeds = cfg.seeds
    from accelerate import PartialState  # set up by the trainer: says which process reports

    if not seeds:
        final = train_grpo(cfg)
        if PartialState().is_main_process:
            print(f"GRPO policy written to {final} (evaluate it with --model tiny:{final})")
        return 0
    for s in seeds:
        train_grpo(cfg, seed=s, out=Path(cfg.out) / f"seed-{s}")
    if PartialState().is_main_process:
        print(f"GRPO sweep over seeds {', '.join(map(str, seeds))} written to {cfg.out}/seed-*")
    return 0

"""What vlmstress adds to a GRPO step, and what the dynamics evaluation costs.

Times steps of four GRPOTrainers on the same tiny model, data, batch size and generations, side by
side in one process (rounds in rotating order, so machine load hits each alike):
- `ours`: the trainer `vlmstress train grpo` builds (format + accuracy rewards, augmentation at the
  config's rates or, as the demo's augment arms, 10% each when it has none, the prefill-aware chat
  template, generation and scoring in length groups), its dynamics callback detached;
- `ours-noaug`: the same with augmentation off;
- `ours-ungrouped`: `ours` with `length_groups: 1` (TRL's one padded batch per model call);
- `plain`: TRL's GRPOTrainer with the base prompts and one plain accuracy reward (a regex).
step_ratio = ours / plain, the product of what our code does (ours-noaug / plain) and what the
augmented prompts cost (ours / ours-noaug: captions and think prefills make prompts longer), both
printed, with what the length groups save (ours / ours-ungrouped).
Then times one dynamics evaluation at the config's settings and reports the share of wall time it
takes when it runs every `eval_every` steps.

    python benchmarks/grpo_step.py [--config configs/grpo-tiny.yaml] [--steps 4] [--rounds 6]

Without the shipped tiny weights, a randomly initialised tiny model of the same size stands in (it
never stops early, so every completion runs to the length limit: the slow case for both trainers).
The last line is `step_ratio=X eval_share=Y` (targets: <= 1.10 and <= 0.25).
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from vlmstress.train.config import GRPORunConfig, load_config

_ANSWER = re.compile(r"<answer>\s*([A-Z])\s*</answer>")


def plain_accuracy(prompts, completions, target, **_):
    """What a plain TRL user writes: the letter in <answer></answer> against the target column."""
    out = []
    for c, t in zip(completions, target, strict=True):
        text = c[0]["content"] if isinstance(c, list) else c
        m = _ANSWER.search(text)
        out.append(1.0 if m and m.group(1) == t else 0.0)
    return out


class StepTimer(TrainerCallback):
    """Wall time from one step's end to the next (generation, rewards, loss, optimizer, data)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def policy_path(init: str, tmp: Path) -> str:
    """The config's init, or a random tiny model of the shipped size when the weights are not there."""
    from vlmstress.models import tiny

    if init != "tiny" or (tiny.ASSET_DIR / "config.json").is_file():
        return init
    from vlmstress.train.sft import corpus

    print("shipped tiny weights not found: timing a randomly initialised tiny model of the same size")
    tokenizer = tiny.build_tokenizer(corpus(n=200))
    tiny.save(tiny.new_model(tokenizer, "default"), tiny.build_processor(tokenizer), tmp / "random-tiny")
    return f"tiny:{tmp / 'random-tiny'}"


def plain_trainer(cfg: GRPORunConfig, out: Path, timer: StepTimer):
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText
    from trl import GRPOTrainer

    from vlmstress.models.hf import load_processor
    from vlmstress.models.registry import parse_spec
    from vlmstress.models.tiny import ASSET_DIR
    from vlmstress.perturb import TEMPLATES, render_user
    from vlmstress.train.data import load_training_samples
    from vlmstress.train.grpo import trl_config

    kind, target = parse_spec(cfg.init)
    path = str(target or ASSET_DIR)
    samples = load_training_samples(cfg.data, cfg.data_seed, log=lambda _: None)
    template = TEMPLATES[cfg.template]
    rows = [
        {
            "prompt": [{"role": "user", "content": render_user(s.question, s.options, template)}],
            "images": [s.image],
            "target": s.target,
        }
        for s in samples
    ]
    processor = load_processor(path)
    processor.tokenizer.padding_side = "left"
    return GRPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(path),
        reward_funcs=[plain_accuracy],
        args=trl_config(cfg, seed=0, out=out, reward_weights=[1.0]),
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
        callbacks=[timer],
    )


def main(argv: list[str] | None = None) -> None:
    from vlmstress import study
    from vlmstress.train.grpo import build_trainer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/grpo-tiny.yaml")
    p.add_argument("--steps", type=int, default=4, help="timed steps per round and trainer")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each round")
    p.add_argument("--rounds", type=int, default=6, help="rounds in rotating order: load changes hit all")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base = load_config(args.config, GRPORunConfig)
        eval_every = base.dynamics.eval_every
        # Timing runs: no checkpoints, no evaluation inside the timed steps (it is timed on its own).
        dyn = base.dynamics.model_copy(update={"at_start": False, "eval_every": 10**9})
        cfg = base.model_copy(
            update={
                "init": policy_path(base.init, tmp),
                "max_steps": args.warmup + args.steps,
                "save_steps": 10**9,
                "logging_steps": 10**9,
                "dynamics": dyn,
            }
        )
        quiet = lambda _: None  # noqa: E731
        runs, dynamics = {}, None
        # Augmentation as the demo's augment arms take it: the config's rates, or 10% each without any.
        arms = {arm.name: arm for arm in study.ARMS}
        for name, arm, groups in (
            ("ours", "augment", cfg.length_groups),
            ("ours-noaug", "plain", cfg.length_groups),
            ("ours-ungrouped", "augment", 1),
        ):
            run_cfg = study.arm_config(cfg, arms[arm]).model_copy(update={"length_groups": groups})
            timer = StepTimer()
            trainer, dyn_cb = build_trainer(run_cfg, seed=0, out=tmp / name, log=quiet, callbacks=[timer])
            # Evaluation is timed on its own below, not at the end of every timing round.
            trainer.remove_callback(dyn_cb)
            runs[name] = (trainer, timer)
            dynamics = dynamics or dyn_cb
        timer = StepTimer()
        runs["plain"] = (plain_trainer(cfg, tmp / "plain", timer), timer)
        times: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                trainer, timer = runs[name]
                timer.times.clear()
                trainer.train()
                times[name] += timer.times[args.warmup :]
        med = {name: statistics.median(t) for name, t in times.items()}
        t_ours = med["ours"]
        print(
            f"GRPO step, {cfg.per_device_train_batch_size} completions (G = {cfg.num_generations}), "
            f"max {cfg.max_completion_length} tokens, {args.threads} thread(s), "
            f"median over {len(times['ours'])} steps:"
        )
        print(f"  vlmstress (rewards + augmentation):  {t_ours:.3f} s")
        print(f"  vlmstress, augmentation off:         {med['ours-noaug']:.3f} s")
        print(f"  vlmstress, no length groups:         {med['ours-ungrouped']:.3f} s")
        print(f"  plain TRL (regex accuracy reward):   {med['plain']:.3f} s")
        print(
            f"  our code x{med['ours-noaug'] / med['plain']:.3f} (ours-noaug / plain), "
            f"augmented prompts x{t_ours / med['ours-noaug']:.3f} (ours / ours-noaug), "
            f"length groups x{t_ours / med['ours-ungrouped']:.3f} (ours / ours-ungrouped)"
        )

        t0 = time.perf_counter()
        dynamics.evaluate(runs["ours"][0].model, 0)
        t_eval = time.perf_counter() - t0
        n = len(dynamics.samples) * len(dynamics.variants)
        share = t_eval / (t_eval + eval_every * t_ours)
        print(
            f"  dynamics evaluation: {t_eval:.1f} s for {n} generations "
            f"({len(dynamics.samples)} samples x {len(dynamics.variants)} variants), every {eval_every} steps"
        )
    print(f"step_ratio={t_ours / med['plain']:.3f} eval_share={share:.3f}")


if __name__ == "__main__":
    main()

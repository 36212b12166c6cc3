"""Training dynamics: every `eval_every` steps, evaluate the live policy with the evaluation runner.

The callback wraps the model being trained (no copy, no reload) in an HFModel and runs the same
`run_eval` as `vlmstress eval` on held-out samples (by default the synthetic `val` split, disjoint
from the train and test streams; any evaluation Data SPEC can be configured) under the chosen
variants. Each evaluation keeps its run folder
(`dynamics/step-NNNNNN/`: records.jsonl, metrics.json, summary.md) and appends one row per variant
to `dynamics.jsonl`:

  step, seed, variant, n, accuracy, consistency_adjusted_accuracy, mean_entropy, mean_p_correct,
  mean_completion_tokens, reward, distinct_think_share, followed_misleading, unparsed_rate

`reward` is the training reward (the configured weighted reward functions) of the greedy evaluation
completions; `distinct_think_share` is the share of distinct think texts the policy wrote, which
falls when it collapses into one templated reasoning (the paper's shortcut signal; null for variants
whose prefill is a closed think, where the policy writes none). The
rows also go to TensorBoard under `dynamics/<variant>/<field>`.

On resume the rows and folders of steps after the checkpoint are dropped: they describe a policy
the resumed run is about to redo. A run that starts at step 0 starts a fresh log.

With several training processes the main one evaluates and writes, and the others wait for it. Under
DDP and ZeRO-1/2 each process holds the whole model and the main one evaluates it in place. Under
ZeRO-3 and FSDP each holds a slice of every weight, and the model run on one process alone would wait
forever for the others' slices: so every process takes part in saving the policy whole (as for a
checkpoint, `.policy-NNNNNN/` under dynamics/), the main one loads that copy on its device, evaluates
it and deletes it. The processes must agree on when to evaluate: each reads the steps already logged.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from vlmstress.data.schema import Record, Sample
from vlmstress.train import sharding

DYNAMICS_FILE = "dynamics.jsonl"
FIELDS = (
    "accuracy",
    "consistency_adjusted_accuracy",
    "mean_entropy",
    "mean_p_correct",
    "followed_misleading",
    "unparsed_rate",
)


def distinct_think_share(records: Sequence[dict]) -> float | None:
    """Distinct think texts / records with a think the policy wrote (whitespace-normalised).

    A think the prompt prefilled and closed (stop_think, wrong_think, correct_think) is not the
    policy's, so those records do not count; None when no record has a think of the policy's.
    """
    thinks = [
        " ".join(r["think"].split())
        for r in records
        if r.get("think") and "</think>" not in (r.get("prefill") or "")
    ]
    return len(set(thinks)) / len(thinks) if thinks else None


def _json_or_none(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


class DynamicsCallback(TrainerCallback):
    """Evaluate the policy at step 0 (optional), every `eval_every` steps and at the last step."""

    def __init__(
        self,
        processor: Any,
        samples: Sequence[Sample],
        *,
        out: str | Path,
        seed: int,
        data_seed: int = 0,
        data_name: str | None = None,
        variants: Sequence[str],
        eval_every: int,
        judges: Sequence[str] = ("rule",),
        reward_funcs: Sequence[Callable] = (),
        reward_weights: Sequence[float] = (),
        batch_size: int = 16,
        max_new_tokens: int = 96,
        template: str = "vlmstress",
        system: str | None = None,
        at_start: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        from vlmstress.models.registry import load_judge

        # seed: the training run's, written into each row; data_seed: the held-out set's (misleading
        # letters included), shared by every run of a sweep so that their rows compare.
        self.processor, self.samples, self.out, self.seed = processor, list(samples), Path(out), seed
        self.data_seed = data_seed
        self.data_name = data_name or f"synth-val:{len(self.samples)}"
        self.variants, self.eval_every, self.judge_specs = list(variants), eval_every, list(judges)
        self.judges = [load_judge(j) for j in judges]
        self.reward_funcs, self.reward_weights = list(reward_funcs), list(reward_weights)
        self.batch_size, self.max_new_tokens, self.template = batch_size, max_new_tokens, template
        self.system, self.at_start, self.log = system, at_start, log
        self.seconds = 0.0  # wall time spent evaluating, for the eval-share benchmark
        self._done: set[int] = set()
        self._writer = None
        # The trainer (build_trainer sets it): its accelerator says whether the weights are sliced.
        self.trainer: Any = None

    @property
    def path(self) -> Path:
        return self.out / DYNAMICS_FILE

    # -- trainer events --------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # A resumed run keeps what it evaluated up to its checkpoint; a fresh one starts a fresh log.
        keep = state.global_step if state.global_step > 0 else -1
        if state.is_world_process_zero:
            self._forget_after(keep)
        else:  # the others only learn which steps are done (the main process rewrites atomically)
            self._done = {r["step"] for r in self._logged_rows() if r["step"] <= keep}
        if self.at_start and state.global_step == 0 and 0 not in self._done:
            self._evaluate_on_main(state, model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.eval_every == 0:
            self._evaluate_on_main(state, model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.global_step not in self._done:
            self._evaluate_on_main(state, model, state.global_step)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _evaluate_on_main(self, state, model: Any, step: int) -> None:
        """The main process evaluates `model`, or under ZeRO-3 / FSDP a saved whole copy of it."""
        trainer = self.trainer
        if trainer is None or not sharding.weights_sharded(trainer.accelerator):
            if state.is_world_process_zero:
                self.evaluate(model, step)
        else:
            self._evaluate_saved_copy(state, step)
        self._done.add(step)

    def _evaluate_saved_copy(self, state, step: int) -> None:
        from transformers import AutoModelForImageTextToText

        trainer, folder = self.trainer, self.out / "dynamics" / f".policy-{step:06d}"
        trainer.save_model(str(folder))  # every process: it gathers the slices; the main one writes
        trainer.accelerator.wait_for_everyone()
        if state.is_world_process_zero:
            try:
                with _whole_model_loading():
                    copy = AutoModelForImageTextToText.from_pretrained(folder, dtype="auto")
                self.evaluate(copy.to(trainer.accelerator.device), step)
                del copy
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate(self, model: Any, step: int) -> list[dict]:
        """Evaluate `model` now, append its rows to dynamics.jsonl and TensorBoard; returns the rows."""
        from vlmstress.models.hf import HFModel
        from vlmstress.runlog import RECORDS, read_records
        from vlmstress.runner import RunSpec, run_eval

        t0 = time.perf_counter()
        run_dir = self.out / "dynamics" / f"step-{step:06d}"
        if run_dir.exists():  # left by an interrupted run: those records are of other weights
            shutil.rmtree(run_dir)
        was_training = model.training
        model.eval()
        try:
            policy = HFModel(
                model=model, processor=self.processor, name=f"policy@{step}", device=str(model.device)
            )
            spec = RunSpec(
                model=f"policy@{step}",
                data=self.data_name,
                variants=self.variants,
                judges=self.judge_specs,
                seed=self.data_seed,
                batch_size=self.batch_size,
                max_new_tokens=self.max_new_tokens,
                template=self.template,
                system=self.system,
            )
            metrics = run_eval(policy, self.samples, spec, run_dir, judges=self.judges, progress=False)
        finally:
            model.train(was_training)
        records = [r for r in read_records(run_dir / RECORDS) if r.get("error") is None]
        rows = [
            self._row(step, v, metrics["variants"].get(v, {}), [r for r in records if r["variant"] == v])
            for v in self.variants
        ]
        with self.path.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        self._tensorboard(step, rows)
        self._done.add(step)
        self.seconds += time.perf_counter() - t0
        summary = ", ".join(f"{r['variant']} {r['accuracy']:.3f}" for r in rows if r["accuracy"] is not None)
        self.log(f"dynamics step {step}: accuracy {summary} ({time.perf_counter() - t0:.1f}s)")
        return rows

    def _row(self, step: int, variant: str, m: dict, records: list[dict]) -> dict:
        return {
            "step": step,
            "seed": self.seed,
            "variant": variant,
            "n": m.get("n", len(records)),
            **{k: m.get(k) for k in FIELDS},
            "mean_completion_tokens": _mean([r.get("n_tokens") or 0 for r in records]),
            "reward": self._reward(records),
            "distinct_think_share": distinct_think_share(records),
        }

    def _reward(self, records: list[dict]) -> float | None:
        """Mean training reward of the evaluation completions, each scored against the prompt its
        record carries (as training's prompt column writes it: prompt_messages)."""
        if not records or not self.reward_funcs:
            return None
        from vlmstress.train.augment import prompt_messages
        from vlmstress.train.rewards import weighted_total

        by_id = {s.sample_id: s for s in self.samples}
        prompts, completions, targets, options, questions = [], [], [], [], []
        for r in records:
            sample = by_id[r["sample_id"]]
            p = Record.from_json(r).asked()
            if p is None:  # nothing was asked (the records here are answers: never so)
                continue
            prompts.append(prompt_messages(p))
            completions.append(r["response"] or "")
            targets.append(p.target)
            options.append(list(p.options))
            questions.append(sample.question)
        totals = weighted_total(
            self.reward_funcs,
            self.reward_weights,
            prompts,
            completions,
            target=targets,
            options=options,
            question=questions,
        )
        return _mean(totals)

    def _tensorboard(self, step: int, rows: list[dict]) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.out / "runs" / "dynamics"))
        for row in rows:
            for key, value in row.items():
                if key not in ("step", "seed", "variant") and isinstance(value, int | float):
                    self._writer.add_scalar(f"dynamics/{row['variant']}/{key}", value, step)
        self._writer.flush()

    def _logged_rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [r for r in map(_json_or_none, self.path.read_text().splitlines()) if r is not None]

    def _forget_after(self, step: int) -> None:
        """Keep the rows (and run folders) of steps <= `step` only: a resumed run redoes the rest."""
        if self.path.exists():
            lines = [line for line in self.path.read_text().splitlines() if line.strip()]
            keep = [r for r in map(_json_or_none, lines) if r is not None and r["step"] <= step]
            if len(keep) != len(lines):  # later steps, or a line torn by a crash
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
                tmp.replace(self.path)
            self._done = {r["step"] for r in keep}
        for folder in (self.out / "dynamics").glob("step-*"):
            if folder.name[5:].isdigit() and int(folder.name[5:]) > step:
                shutil.rmtree(folder)
        for folder in (self.out / "dynamics").glob(".policy-*"):  # copies left by a killed run
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _whole_model_loading() -> Iterator[None]:
    """Under ZeRO-3, transformers creates every model already sliced over the processes (a collective
    the others, waiting at a barrier, would never join): the main process's copy is loaded whole with
    that switched off. transformers keeps the switch as a module-level weak reference; it is put back."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = ref

"""GRPO end to end on a test-size tiny Qwen2.5-VL: weights move, dynamics rows, prefills, resume."""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import shutil
import warnings

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vlmstress.errors import UsageError
from vlmstress.train.config import GRPORunConfig, load_config
from vlmstress.train.dynamics import DYNAMICS_FILE
from vlmstress.train.grpo import parse_seeds, run_grpo_command, train_grpo, trl_config

ROW_FIELDS = {
    "step",
    "seed",
    "variant",
    "accuracy",
    "consistency_adjusted_accuracy",
    "mean_entropy",
    "mean_p_correct",
    "mean_completion_tokens",
    "reward",
    "distinct_think_share",
}
VARIANTS = ["base", "wrong_think"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The machine's cores are shared; one thread is also the fastest for a model this small.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A test-size tiny model after a few dozen SFT steps: enough to write the answer format, so GRPO's
    rewards vary within a group and the policy gradient is not zero (a random model earns nothing)."""
    from vlmstress.data import synth
    from vlmstress.models import tiny
    from vlmstress.train.sft import Batcher, corpus, make_example

    tokenizer = tiny.build_tokenizer(corpus(n=40))
    processor = tiny.build_processor(tokenizer)
    model = tiny.new_model(tokenizer, size="test", seed=0)
    pool, rng = synth.generate(60, seed=0, split="train"), random.Random(0)
    batcher, opt = Batcher(processor), torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        batch = batcher([make_example(rng.choice(["qa", "think"]), rng.choice(pool), rng) for _ in range(16)])
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("policy")
    tiny.save(model.eval(), processor, out)
    return out


def config(policy_dir, tmp_path, **overrides) -> GRPORunConfig:
    raw = {
        "init": f"tiny:{policy_dir}",
        "out": str(tmp_path / "run"),
        "torch_threads": 1,
        "data": [{"source": "synth", "n": 32}],
        "max_steps": 4,
        "num_generations": 4,
        "per_device_train_batch_size": 8,
        "max_completion_length": 32,
        "learning_rate": 1e-3,
        "temperature": 1.5,
        "save_steps": 2,
        "logging_steps": 1,
        "dynamics": {"eval_every": 2, "n": 5, "variants": VARIANTS, "max_new_tokens": 32},
        **overrides,
    }
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path, GRPORunConfig)


def rows_of(out):
    return [json.loads(line) for line in (out / DYNAMICS_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(policy_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    cfg = config(policy_dir, tmp)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning the run gives, once or not
        final = train_grpo(cfg, out=tmp / "run", log=lambda _: None)
    full_run_warnings[:] = [f"{w.category.__name__}: {w.message}" for w in caught]
    return cfg, tmp / "run", final


full_run_warnings: list[str] = []


def test_the_model_card_names_the_base_model_and_known_noise_is_quiet(policy_dir, full_run):
    _, out, _ = full_run
    card = (out / "README.md").read_text()
    assert f"fine-tuned version of [tiny:{policy_dir}]" in card and "[None]" not in card
    noise = [w for w in full_run_warnings if "pin_memory" in w or "is_gradient_checkpointing" in w]
    assert noise == []


def test_short_run_moves_the_weights_and_writes_dynamics(policy_dir, full_run):
    _, out, final = full_run
    before, after = load_file(policy_dir / "model.safetensors"), load_file(final / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = rows_of(out)
    assert [(r["step"], r["variant"]) for r in rows] == [(s, v) for s in (0, 2, 4) for v in VARIANTS]
    for r in rows:
        assert r.keys() >= ROW_FIELDS and r["seed"] == 0
        assert 0 <= r["accuracy"] <= 1 and r["reward"] >= 0 and r["mean_completion_tokens"] > 0
        if r["variant"] == "base":
            assert all(r[k] is not None for k in ROW_FIELDS), r
            assert 0 < r["distinct_think_share"] <= 1
        else:  # wrong_think: the think is the prefill's, not the policy's
            assert r["distinct_think_share"] is None and r["followed_misleading"] is not None
    # each evaluation kept its runner folder; TensorBoard has the dynamics scalars
    assert (out / "dynamics" / "step-000004" / "records.jsonl").is_file()
    assert list((out / "runs" / "dynamics").glob("events.out.tfevents.*"))
    # checkpoints hold safetensors weights; the final folder loads as a tiny:DIR model
    assert (out / "checkpoint-4" / "model.safetensors").is_file()
    # and no pickle: the training arguments are JSON
    assert not list(out.rglob("training_args.bin"))
    assert json.loads((out / "checkpoint-4" / "training_args.json").read_text())["seed"] == 0
    from vlmstress.models.tiny import load_tiny

    assert load_tiny(final).generate  # loads without error


def test_sliced_weights_are_evaluated_from_a_saved_whole_copy(policy_dir, full_run, tmp_path, monkeypatch):
    """Under ZeRO-3 / FSDP no process holds the whole policy: every process helps save it whole and
    the main one evaluates that copy, and the final policy is saved from the gathered weights. Faked
    here in one process (weights_sharded says yes): the rows and the final weights must equal those
    of the run that evaluated the live policy, and no copy is left behind."""
    from vlmstress.train import grpo, sharding

    asked = []
    monkeypatch.setattr(sharding, "weights_sharded", lambda accelerator: asked.append(accelerator) or True)
    saved = []
    real_save = grpo.save_policy
    monkeypatch.setattr(grpo, "save_policy", lambda *a, **k: saved.append(k) or real_save(*a, **k))
    out = tmp_path / "run"
    final = train_grpo(config(policy_dir, tmp_path), out=out, log=lambda _: None)
    assert len(asked) == 4  # the evaluations at steps 0, 2, 4 and the final save
    assert saved and saved[0]["state_dict"] is not None
    assert rows_of(out) == rows_of(full_run[1])
    assert sorted(p.name for p in (out / "dynamics").iterdir()) == [f"step-{s:06d}" for s in (0, 2, 4)]
    live, copy = load_file(full_run[2] / "model.safetensors"), load_file(final / "model.safetensors")
    assert all(torch.equal(live[k], copy[k]) for k in live)


class Interrupt(Exception):
    pass


class InterruptAt:
    """Stops training abruptly at a step, as a kill would (after checkpoint-2 was written)."""

    def __init__(self, step):
        self.step = step

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        return lambda *a, **k: None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupt


def test_resume_after_interruption(policy_dir, full_run, tmp_path):
    cfg = config(policy_dir, tmp_path)
    out = tmp_path / "run"
    first = []
    with pytest.raises(Interrupt):
        train_grpo(cfg, out=out, log=first.append, callbacks=[InterruptAt(3)])
    assert any(line.startswith("starting from scratch") for line in first)
    assert (out / "checkpoint-2").is_dir() and not (out / "final").exists()
    # a kill right after the weights of checkpoint-3 were written, before its trainer_state.json
    torn = out / "checkpoint-3"
    torn.mkdir()
    shutil.copy(out / "checkpoint-2" / "model.safetensors", torn / "model.safetensors")
    logged = []
    final = train_grpo(cfg, out=out, log=logged.append)
    assert any("resuming from" in line and line.endswith("checkpoint-2") for line in logged)
    assert any("skipping incomplete" in line and "checkpoint-3" in line for line in logged)
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # no step is reported twice, none is missing
    assert [(r["step"], r["variant"]) for r in rows_of(out)] == [(s, v) for s in (0, 2, 4) for v in VARIANTS]
    # the resumed run ends where the uninterrupted one did (same seed: RNG state is restored)
    uninterrupted = load_file(full_run[2] / "model.safetensors")
    resumed = load_file(final / "model.safetensors")
    assert all(torch.allclose(uninterrupted[k], resumed[k], atol=1e-6) for k in resumed)


def test_think_prefills_are_continued_by_trl(policy_dir, tmp_path, monkeypatch):
    """Every prompt prefilled with its correct think: the policy must continue the prefilled turn
    (the warm policy then writes `<answer>X</answer>`), not open a fresh one after it, and the format
    reward must read the prefill and the completion as one turn."""
    from vlmstress.train import rewards

    seen = []

    def recording_format_reward(prompts, completions, **columns):
        if "sample_id" in columns:  # training batches (the dynamics evaluation calls it too)
            seen.extend(zip(prompts, completions, strict=True))
        return rewards.format_reward(prompts, completions, **columns)

    recording_format_reward.__name__ = "format_reward"
    monkeypatch.setitem(rewards.REWARDS._entries, "format", recording_format_reward)
    only_think = {"correct_think": 1.0, "wrong_think": 0.0, "correct_caption": 0.0, "wrong_caption": 0.0}
    cfg = config(
        policy_dir,
        tmp_path,
        max_steps=1,
        temperature=1.0,
        augment=only_think,
        dynamics={"at_start": False, "eval_every": 100, "n": 2, "variants": ["base"]},
    )
    train_grpo(cfg, out=tmp_path / "run", log=lambda _: None)
    assert len(seen) == 8
    assert all(rewards.prefill_text(p).startswith("<think>") for p, _ in seen)
    continued = [rewards.completion_text(c).startswith("<answer>") for _, c in seen]
    assert sum(continued) >= 4
    # a bare answer after the prefilled think is a whole, well-formed turn
    bare = [(p, c) for p, c in seen if re.fullmatch(r"<answer>[A-D]</answer>", rewards.completion_text(c))]
    assert bare and rewards.format_reward(*zip(*bare, strict=True)) == [1.0] * len(bare)


def test_config_errors(policy_dir, tmp_path):
    with pytest.raises(UsageError, match="learning_rat: Extra inputs"):
        config(policy_dir, tmp_path, learning_rat=1.0)
    with pytest.raises(UsageError, match="augment"):
        config(policy_dir, tmp_path, augment={"wrong_think": 0.9, "wrong_caption": 0.9})
    with pytest.raises(UsageError, match="unknown GRPOConfig"):
        trl_config(
            config(policy_dir, tmp_path, trl={"no_such_field": 1}), seed=0, out=tmp_path, reward_weights=[1]
        )
    with pytest.raises(UsageError, match="num_generations"):
        trl_config(config(policy_dir, tmp_path, num_generations=3), seed=0, out=tmp_path, reward_weights=[1])
    with pytest.raises(UsageError, match="tiny weights|config.json"):
        train_grpo(config(policy_dir, tmp_path, init=f"tiny:{tmp_path}"))
    with pytest.raises(UsageError, match="warmup_steps"):
        config(policy_dir, tmp_path, warmup_steps=2.5)


def test_warmup_is_steps_or_a_fraction_of_max_steps(policy_dir, tmp_path):
    def warmup(value, max_steps):
        cfg = config(policy_dir, tmp_path, warmup_steps=value, max_steps=max_steps)
        return trl_config(cfg, seed=0, out=tmp_path, reward_weights=[1]).get_warmup_steps(max_steps)

    assert warmup(0.08, 120) == 10 and warmup(0.08, 5) == 1
    assert warmup(10, 120) == 10 and warmup(10.0, 5) == 10


def test_seeds(policy_dir, tmp_path):
    assert parse_seeds("0, 1,2") == [0, 1, 2] and parse_seeds(None) is None
    for bad in ("1,x", "1,1", ","):
        with pytest.raises(UsageError):
            parse_seeds(bad)
    config(policy_dir, tmp_path, max_steps=1, dynamics={"at_start": False, "n": 2, "variants": ["base"]})
    args = argparse.Namespace(
        config=str(tmp_path / "grpo.yaml"),
        max_steps=None,
        seed=None,
        out=str(tmp_path / "sweep"),
        seeds="3,4",
    )
    assert run_grpo_command(args) == 0
    for s in (3, 4):
        (row,) = rows_of(tmp_path / "sweep" / f"seed-{s}")
        assert (row["step"], row["seed"]) == (1, s)


def test_distinct_think_share_counts_the_policys_thinks():
    from vlmstress.train.dynamics import distinct_think_share

    rows = [
        {"think": "a  b", "prefill": ""},
        {"think": "a b", "prefill": ""},
        {"think": "c", "prefill": "<think>"},
    ]
    assert distinct_think_share(rows) == pytest.approx(2 / 3)
    assert distinct_think_share([{"think": "x", "prefill": "<think>x</think>"}, {"think": None}]) is None


def test_dynamics_log_on_resume_and_on_a_fresh_start(tmp_path):
    from types import SimpleNamespace

    from vlmstress.train.dynamics import DynamicsCallback

    def lay_out():
        lines = [json.dumps({"step": s, "variant": "base"}) for s in (0, 2, 4)]
        (tmp_path / DYNAMICS_FILE).write_text("\n".join(lines) + '\n{"step": 6, "vari')  # torn by a kill
        for s in (2, 4):
            (tmp_path / "dynamics" / f"step-{s:06d}").mkdir(parents=True, exist_ok=True)

    callback = DynamicsCallback(
        None, [], out=tmp_path, seed=0, variants=["base"], eval_every=2, at_start=False
    )
    lay_out()
    callback.on_train_begin(None, SimpleNamespace(global_step=2, is_world_process_zero=True), None)
    assert [r["step"] for r in rows_of(tmp_path)] == [0, 2]
    assert sorted(p.name for p in (tmp_path / "dynamics").iterdir()) == ["step-000002"]
    lay_out()
    callback.on_train_begin(None, SimpleNamespace(global_step=0, is_world_process_zero=True), None)
    assert rows_of(tmp_path) == [] and not list((tmp_path / "dynamics").iterdir())


def test_trl_scores_completions_as_our_forward_pass_does(policy_dir, tmp_path):
    """The log-probabilities GRPO's gradient is built from are those of the model that generated:
    TRL's own forward (its mm_token_type_ids, 3-D rope, left padding) against the processor's inputs
    for each whole sequence, one at a time."""
    from vlmstress.train.grpo import build_trainer

    cfg = config(policy_dir, tmp_path, temperature=1.0)
    trainer, _ = build_trainer(cfg, seed=0, out=tmp_path / "run", log=lambda _: None)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        out = trainer._generate_and_score_completions(batch)
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
        mask = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
        trl_logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            ids,
            mask,
            out["completion_ids"].size(1),
            pixel_values=out["pixel_values"],
            image_grid_thw=out["image_grid_thw"],
            num_images=out["num_images"],
            mm_token_type_ids=out["mm_token_type_ids"],
        )
        proc, checked = trainer.processing_class, 0
        image_tokens = int(out["image_grid_thw"][0].prod()) // 4  # merged 2x2
        for i in range(ids.size(0)):
            n = int(out["completion_mask"][i].sum())
            if n == 0:
                continue
            # the prompt through the processor (its own image tokens and mm_token_type_ids), then the
            # sampled completion's ids as they are (sampled text need not re-tokenize to them)
            prompt = out["prompt_ids"][i][out["prompt_mask"][i].bool()]
            text = proc.tokenizer.decode(prompt).replace("<|image_pad|>" * image_tokens, "<|image_pad|>")
            enc = proc(text=[text], images=batch[i]["images"], return_tensors="pt")
            assert enc["input_ids"][0].tolist() == prompt.tolist()
            completion = out["completion_ids"][i][:n]
            enc["input_ids"] = torch.cat([enc["input_ids"], completion[None]], 1)
            for key in ("attention_mask", "mm_token_type_ids"):
                fill = 1 if key == "attention_mask" else 0
                enc[key] = torch.cat([enc[key], torch.full((1, n), fill, dtype=enc[key].dtype)], 1)
            logps = torch.log_softmax(trainer.model(**enc).logits[0].float(), -1)
            ours = logps[-n - 1 : -1].gather(1, completion[:, None])[:, 0]
            torch.testing.assert_close(trl_logps[i][:n], ours, atol=1e-4, rtol=1e-4)
            checked += 1
    assert checked >= len(batch) // 2


# -- LoRA / QLoRA, image caps, report_to ------------------------------------------------------------


def test_lora_run_trains_the_adapter_alone_and_its_merged_policy_evaluates(policy_dir, tmp_path):
    """Two LoRA steps: the adapter moves and no base weight does (the final folder is exactly base +
    the merged adapter update), checkpoints hold the adapter as safetensors and no .bin, the vision
    tower has no adapter, and the final folder evaluates as `tiny:DIR` with no peft involved."""
    from transformers import AutoModelForImageTextToText

    from vlmstress.api import evaluate

    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    dyn = {"at_start": False, "eval_every": 100, "n": 2, "variants": ["base"], "max_new_tokens": 16}
    small = {"max_steps": 2, "max_pixels": 32 * 32}
    cfg = config(policy_dir, tmp_path, lora=lora, dynamics=dyn, **small)
    out = tmp_path / "run"
    final = train_grpo(cfg, out=out, log=lambda _: None)
    adapter = load_file(out / "checkpoint-2" / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    assert not any("visual" in k for k in adapter)  # the vision tower stays frozen
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at 0
    assert not list(out.rglob("*.bin")) and not (out / "checkpoint-2" / "model.safetensors").exists()
    assert load_file(final / "adapter" / "adapter_model.safetensors").keys() == adapter.keys()

    def weights(folder):
        return AutoModelForImageTextToText.from_pretrained(folder).state_dict()

    base, merged, scale = weights(policy_dir), weights(final), lora["alpha"] / lora["r"]
    adapted = {k.removeprefix("base_model.model.").split(".lora_")[0] + ".weight" for k in adapter}
    final_adapter = load_file(final / "adapter" / "adapter_model.safetensors")
    for key in base:
        expected = base[key]
        if key in adapted:  # W + (alpha / r) B A, with W as it was before training
            prefix = "base_model.model." + key.removesuffix(".weight")
            a, b = final_adapter[prefix + ".lora_A.weight"], final_adapter[prefix + ".lora_B.weight"]
            expected = expected + scale * b @ a
        torch.testing.assert_close(merged[key], expected, msg=key)
    assert len(adapted) == 7 * 2  # 7 projections x 2 layers of the test-size model
    # the training image cap went to the processor, and is saved with the policy
    assert json.loads((final / "preprocessor_config.json").read_text())["size"]["longest_edge"] == 32 * 32
    result = evaluate(f"tiny:{final}", "synth:2", variants=["base"], max_new_tokens=16)
    assert len(result.records) == 1 * 2 and all(r.get("error") is None for r in result.records)


def test_lora_quantization_and_report_to_errors(policy_dir, tmp_path, monkeypatch):
    """Bad LoRA / reporting settings are one-line UsageErrors, made before anything is created."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = config(policy_dir, tmp_path, lora={"quantization": "4bit"})
    with pytest.raises(UsageError, match="needs a CUDA GPU") as err:
        train_grpo(cfg, out=tmp_path / "qlora", log=lambda _: None)
    assert "\n" not in str(err.value) and not (tmp_path / "qlora").exists()
    for bad, words in [
        ({"report_to": "mlflow"}, "report_to.0: Input should be 'tensorboard', 'wandb' or 'none'"),
        ({"report_to": ["none", "tensorboard"]}, "none cannot be combined"),
        ({"lora": {"quantization": "2bit"}}, "lora.quantization"),
        ({"lora": {"r": 0}}, "lora.r"),
        ({"min_pixels": 4096, "max_pixels": 1024}, "min_pixels 4096 is above max_pixels 1024"),
    ]:
        with pytest.raises(UsageError, match=re.escape(words)) as err:
            config(policy_dir, tmp_path, **bad)
        assert "\n" not in str(err.value)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real_find_spec(n, *a)
    )
    with pytest.raises(UsageError, match="report_to wandb needs wandb installed"):
        train_grpo(config(policy_dir, tmp_path, report_to=["wandb"]), out=tmp_path / "wb")
    assert not (tmp_path / "wb").exists()
    args = trl_config(
        config(policy_dir, tmp_path, report_to="none"), seed=0, out=tmp_path, reward_weights=[1]
    )
    assert args.report_to in ("none", [], ["none"])


def test_the_one_gpu_lora_config_reaches_peft_and_trl(tmp_path):
    """configs/grpo-qwen2.5-vl-7b-lora.yaml as shipped: its adapter settings become a LoraConfig that
    leaves the vision tower out, and its batch is the 8-GPU config's 16 prompts x 8 a step."""
    from pathlib import Path

    from vlmstress.train.grpo import VISION_TOWERS, peft_config

    path = Path(__file__).parent.parent / "configs" / "grpo-qwen2.5-vl-7b-lora.yaml"
    cfg = load_config(path, GRPORunConfig)
    lora = peft_config(cfg)
    assert (lora.r, lora.lora_alpha, lora.exclude_modules) == (16, 32, VISION_TOWERS)
    assert re.fullmatch(VISION_TOWERS, "model.visual.blocks.0.mlp.gate_proj")
    assert not re.fullmatch(VISION_TOWERS, "model.language_model.layers.0.mlp.gate_proj")
    cfg = cfg.model_copy(update={"trl": {"use_cpu": True}})  # bf16 on a machine without GPUs
    args = trl_config(cfg, seed=0, out=tmp_path, reward_weights=[0.1, 1.0])
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 16 * 8
    assert args.report_to == ["tensorboard"] and cfg.max_pixels == 1280 * 28 * 28

import json

import pytest
import torch

from vlmstress.cli import main
from vlmstress.data import synth
from vlmstress.models.registry import load_model
from vlmstress.perturb import perturb


def test_train_sft_writes_a_checkpoint_the_eval_loads(tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(
        "kind: sft\nsize: test\nmax_steps: 4\nbatch_size: 4\npool: 40\nvision_pretrain_steps: 2\n"
        "warmup_steps: 1\neval_every: 4\neval_samples: 5\n"
        "curriculum:\n  - until: 0.5\n    mix: {lookup: 1.0}\n"
        "  - until: 1.0\n    mix: {qa: 0.4, describe: 0.3, own: 0.3}\nown_refresh: 2\nown_pool: 6\n"
        "letter_from_own: true\n"
    )
    out = tmp_path / "ckpt"
    assert main(["train", "sft", "--config", str(cfg), "--out", str(out)]) == 0
    assert (out / "model.safetensors").exists()
    log = json.loads((out / "train_log.json").read_text())
    assert log["history"][-1]["step"] == 4 and 0.0 <= log["history"][-1]["all"] <= 1.0
    model = load_model(f"tiny:{out}")
    gen = model.generate([perturb(synth.generate(1)[0], "base", 0)], max_new_tokens=4)[0]
    assert gen.error is None and gen.letter_probs is not None
    assert abs(sum(gen.letter_probs.values()) - 1) < 1e-5


KINDS = ("describe", "lookup", "find", "compare", "qa", "caption", "think", "stop", "recover")


def test_every_example_kind_is_labelled_exactly_on_its_target():
    # The loss must cover the assistant's target and nothing else, also where byte-level BPE merges
    # across the prefill/target boundary (a hedged reasoning followed by its recovery).
    import random

    from vlmstress.models import tiny
    from vlmstress.train.sft import Batcher, corpus, make_example

    tok = tiny.build_tokenizer(corpus(n=100))
    batcher = Batcher(tiny.build_processor(tok))
    rng = random.Random(0)
    samples = synth.generate(10, seed=0, split="train")
    examples = [
        make_example(k, s, rng) for s in samples for k in KINDS if k != "compare" or s.family == "spatial"
    ]
    batch = batcher(examples)
    for ex, labels in zip(examples, batch["labels"]):
        ids = labels[labels != -100].tolist()
        assert tok.decode(ids).strip() == (ex.target + tok.eos_token).strip(), ex


def test_find_and_compare_examples():
    import random

    from vlmstress.train.sft import make_example

    rng = random.Random(0)
    for s in synth.generate(20, seed=1, split="train"):
        ex = make_example("find", s, rng)
        if ex.user.startswith("Where is the "):
            name = ex.user.removeprefix("Where is the ").removesuffix("?")
            obj = next(
                o
                for o in s.facts["objects"]
                if name.endswith(o["shape"]) and (o["size"] in name or " " not in name)
            )
            assert ex.target == (
                f"The {name} is at row {obj['row'] + 1} col {obj['col'] + 1}. It is {obj['colour']}."
            )
            assert ex.image is s.image
        if s.family != "spatial":
            continue
        ex = make_example("compare", s, rng)
        # text only: the located positions are prefilled, the relation and the option line are learnt
        assert ex.image is None and ex.prefill.startswith("<think>The ") and " col " in ex.prefill
        letter = ex.target[-len("X</answer>") : -len("</answer>")]
        assert ex.target.endswith(f"\n{letter}. {s.option_text(letter)}</think><answer>{letter}</answer>")
        assert ex.prefill + ex.target.split("</think>")[0] == "<think>" + synth.think_text(s, letter)


def test_length_groups_give_the_whole_batch_loss_and_gradient():
    # Running a batch as micro-batches of similar length must not change what is learnt.
    import random

    from vlmstress.models import tiny
    from vlmstress.train.sft import Batcher, corpus, make_example, sft_backward

    tok = tiny.build_tokenizer(corpus(n=100))
    batcher = Batcher(tiny.build_processor(tok))
    model = tiny.new_model(tok, "test", seed=0)
    rng = random.Random(0)
    samples = synth.generate(10, seed=0, split="train")
    examples = [
        make_example(k, s, rng) for s, k in zip(samples, ["qa", "lookup", "recover", "find", "stop"] * 2)
    ]
    results = []
    for groups in (1, 3):
        model.zero_grad()
        loss = sft_backward(model, batcher, examples, groups)
        results.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (loss1, grads1), (loss3, grads3) = results
    assert loss1 == pytest.approx(loss3, rel=1e-5) and loss1 > 0
    assert len(grads1) == len(grads3) > 0
    for g1, g3 in zip(grads1, grads3):
        torch.testing.assert_close(g1, g3, rtol=1e-4, atol=1e-6)


def test_a_share_of_captions_argues_for_a_wrong_option_while_the_target_stays_the_truth():
    import random

    from vlmstress.perturb import CAPTION_HEDGE
    from vlmstress.train.sft import make_example

    rng = random.Random(0)
    samples = synth.generate(200, seed=0, split="train")
    wrong = 0
    for s in samples:
        ex = make_example("caption", s, rng, caption_wrong=0.25)
        caption = ex.user.split("\n")[0]
        stated = {
            letter
            for letter in s.option_letters
            if synth.caption_text(s, letter) in caption.replace(CAPTION_HEDGE, ".")
        }
        assert len(stated) == 1, caption
        wrong += stated != {s.target}
        assert ex.target.endswith(f"<answer>{s.target}</answer>")
        assert synth.think_text(s, s.target) in ex.target
    assert 30 < wrong < 70  # about a quarter of 200
    assert all(
        synth.caption_text(s, s.target).rstrip(".") in make_example("caption", s, rng).user
        for s in samples[:20]
    )


def test_captions_without_wrong_ones_draw_as_the_shipped_recipe_did():
    """At caption_wrong 0 a caption example draws only its hedge coin, so configs/sft-tiny.yaml
    (which has no wrong captions) replays the random stream its shipped weights were trained on."""
    import random

    from vlmstress.train.sft import make_example

    s = synth.generate(1, seed=0, split="train")[0]
    rng, expected = random.Random(7), random.Random(7)
    make_example("caption", s, rng)
    expected.random()  # the hedge
    assert rng.getstate() == expected.getstate()


def test_letter_from_own_drops_the_letter_after_written_reasoning_and_nothing_else():
    # With letter_from_own the answer letter after reasoning the recipe wrote (always correct) is
    # left out of the loss; every other target token, and every other kind's letter, stays in.
    import random

    from vlmstress.models import tiny
    from vlmstress.train.sft import WRITTEN_REASONING, Batcher, corpus, make_example

    tok = tiny.build_tokenizer(corpus(n=100))
    batcher = Batcher(tiny.build_processor(tok))
    rng = random.Random(0)
    samples = synth.generate(10, seed=0, split="train")
    kinds = [k for k in KINDS if k != "compare"]
    examples = [make_example(k, s, rng, letter_from_own=True) for s in samples for k in kinds]
    batch = batcher(examples)
    for ex, labels in zip(examples, batch["labels"]):
        text = tok.decode(labels[labels != -100].tolist()).strip()
        full = (ex.target + tok.eos_token).strip()
        if not ex.letter_loss:
            letter = ex.target.rsplit("<answer>", 1)[1][0]
            assert text == full.replace(f"<answer>{letter}</answer>", "<answer></answer>"), ex
        else:
            assert text == full, ex
    masked = {k for k, ex in zip(kinds * len(samples), examples) if not ex.letter_loss}
    assert masked == set(WRITTEN_REASONING)


def test_own_examples_keep_the_models_reasoning_and_supervise_the_true_letter():
    # The shipped model writes its own greedy reasoning; the example keeps it verbatim up to
    # <answer> and targets the truth, also where the model's own answer was wrong.
    import random

    from vlmstress.models import tiny
    from vlmstress.parse import parse
    from vlmstress.train.config import SFTConfig
    from vlmstress.train.sft import own_examples

    shipped = tiny.load_tiny(None)
    samples = synth.generate(40, seed=0, split="train", families=["count"])
    cfg = SFTConfig(curriculum=[{"until": 1.0, "mix": {"own": 1.0}}], own_caption=0.5, caption_wrong=0.5)
    lines = []
    examples = own_examples(shipped.model, shipped.processor, samples, random.Random(0), cfg, lines.append)
    assert len(examples) == len(samples) and "40 of 40 kept" in lines[0]
    wrong = 0
    captioned = 0
    for ex in examples:
        assert ex.prefill.startswith("<think>") and ex.prefill.endswith("</think><answer>")
        assert ex.letter_loss and ex.target.endswith("</answer>")
        s = next(s for s in samples if s.image is ex.image)
        assert ex.target == f"{s.target}</answer>"
        own = parse(ex.prefill + "X</answer>", s.options)
        wrong += own.think is not None and f"\n{s.target}. " not in own.think
        captioned += ex.user.startswith("Caption: ")
    assert wrong > 0  # the shipped model miscounts some of 40 count questions: those are kept
    assert 5 < captioned < 35


def test_the_shipped_sft_configs_validate_and_stage_4_starts_from_stage_3():
    from pathlib import Path

    from vlmstress.train.config import SFTConfig, load_config

    configs = Path(__file__).parent.parent / "configs"
    stages = {
        name: load_config(configs / name, SFTConfig) for name in ("sft-tiny.yaml", "sft-tiny-calibrate.yaml")
    }
    load_config(configs / "sft-tiny-graded.yaml", SFTConfig)
    # the recipe runs in two steps: stage 4 starts from the folder stages 1-3 write
    assert stages["sft-tiny-calibrate.yaml"].init == stages["sft-tiny.yaml"].out
    calibrate = stages["sft-tiny-calibrate.yaml"]
    assert calibrate.letter_from_own and "own" in calibrate.curriculum[-1].mix

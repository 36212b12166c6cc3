"""`vlmstress train sft`: the seeded recipe that teaches the tiny Qwen2.5-VL to see and to reason.

Naive SFT from scratch stays at chance (measured on this project: docs/tiny-model.md): the model learns the
template but neither to see nor to map a value to its option letter. This recipe supervises each
skill directly before and beside the study's format (docs/tiny-model.md has the measurements):
- a vision warm-up (`pretrain_vision`) aligning each image token to the words of its cell's object;
- `lookup`: a text-only question "Which option is X?" -> "The answer is:\nL. X" (the copy from an
  option line to the reasoning's last line, learnt without the image);
- `find`: "Where is the square?" -> "The square is at row 2 col 3. It is red." (one retrieval of an
  object by its shape, the step every located fact of the reasoning repeats);
- `compare`: text only, two written positions -> their relation and the option (spatial's last step);
- `describe`: "Describe the scene." -> every object with colour, size, shape, row and column;
- `qa`: the benchmark question -> <think>{scene facts} The answer is:\nL. X</think><answer>L</answer>;
- the prompt shapes the perturbations use, so that evaluation measures what the model trusts rather
  than what it has never seen: a correct caption (`caption`, sometimes hedged), its own correct
  reasoning prefilled (`think`), the stop-think prefill (`stop`), and a hedged wrong reasoning
  followed by a recovery (`recover`);
- `own`: the model's own greedy reasoning, regenerated as it trains, followed by the *true* answer
  letter (with `letter_from_own`, the only examples whose answer letter after reasoning carries a
  loss). Cross-entropy is a proper scoring rule, so the letter learns the probability that the
  model's own reasoning is right in that context: where its reasoning is reliable (it sees the
  largest shape) the letter stays sure, where it is not (it miscounts four circles) the letter
  spreads. That is a graded, calibrated confidence, and an answer that can disagree with its
  reasoning (docs/tiny-model.md, "Graded confidence").

The loop is a plain PyTorch loop rather than transformers' Trainer: the curriculum redraws the mix at
every step, and at 0.1-0.3 s a step the Trainer's per-step machinery would be a large share.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from vlmstress.data import synth
from vlmstress.data.schema import Sample, letters
from vlmstress.parse import parse
from vlmstress.perturb import (
    CAPTION_HEDGE,
    STOP_THINK,
    TEMPLATES,
    THINK_HEDGE,
    Prompt,
    misleading_letter,
    perturb,
    render_user,
)
from vlmstress.train.config import SFTConfig

TEMPLATE = TEMPLATES["vlmstress"]
DESCRIBE = "Describe the scene."


@dataclass(frozen=True)
class Example:
    user: str
    image: object | None
    prefill: str
    target: str
    # False: the answer letter inside the target's <answer></answer> carries no loss (Batcher)
    letter_loss: bool = True


def describe_text(facts: dict) -> str:
    objs = sorted(facts["objects"], key=lambda o: (o["row"], o["col"]))
    parts = []
    for o in objs:
        size = "" if o["size"] == "medium" else f"{o['size']} "
        parts.append(f"{size}{o['colour']} {o['shape']} at row {o['row'] + 1} col {o['col'] + 1}")
    return "; ".join(parts) + "."


def answer_target(sample: Sample, letter: str) -> str:
    return f"<think>{synth.think_text(sample, letter)}</think><answer>{letter}</answer>"


# Kinds whose target ends on an answer letter after reasoning the recipe wrote (always correct):
# with letter_from_own their letter carries no loss (SFTConfig.letter_from_own says why).
WRITTEN_REASONING = ("qa", "caption", "think", "recover")


def make_example(
    kind: str,
    sample: Sample,
    rng: random.Random,
    caption_wrong: float = 0.0,
    letter_from_own: bool = False,
) -> Example:
    ex = _make_example(kind, sample, rng, caption_wrong)
    if letter_from_own and kind in WRITTEN_REASONING:
        return replace(ex, letter_loss=False)
    return ex


def _make_example(kind: str, sample: Sample, rng: random.Random, caption_wrong: float) -> Example:
    target_letter = sample.target
    user = render_user(sample.question, sample.options, TEMPLATE)
    full = answer_target(sample, target_letter)
    if kind == "describe":
        return Example(DESCRIBE, sample.image, "", describe_text(sample.facts))
    if kind == "lookup":
        value = sample.option_text(target_letter)
        q = f"Which option is {value}?"
        return Example(
            render_user(q, sample.options, TEMPLATE),
            None,
            "",
            f"<think>The answer is:\n{target_letter}. {value}</think><answer>{target_letter}</answer>",
        )
    if kind == "find":
        # one retrieval by shape, the step every located fact of the reasoning repeats
        shapes = [o["shape"] for o in sample.facts["objects"]]
        o = rng.choice([o for o in sample.facts["objects"] if shapes.count(o["shape"]) == 1] or [None])
        if o is None:
            return _make_example("describe", sample, rng, caption_wrong)
        name = o["shape"] if o["size"] == "medium" else f"{o['size']} {o['shape']}"
        return Example(
            f"Where is the {name}?",
            sample.image,
            "",
            f"The {name} is at row {o['row'] + 1} col {o['col'] + 1}. It is {o['colour']}.",
        )
    if kind == "compare":
        # text only: from two written positions to their relation and the option (spatial's last step)
        if sample.family != "spatial":
            raise ValueError("a compare example needs a spatial sample")
        # any letter: its positions are then made up to fit, which varies the pairs compared
        letter = rng.choice(letters(len(sample.options)))
        located, _, rest = synth.think_text(sample, letter).partition(" So ")
        return Example(user, None, f"<think>{located}", f" So {rest}</think><answer>{letter}</answer>")
    if kind == "qa":
        return Example(user, sample.image, "", full)
    if kind == "caption":
        # a caption is wrong with probability `caption_wrong` while the target stays the truth: the
        # model learns to weigh a caption against the image (trusting it where the image is unclear)
        # instead of copying it. No draw at 0, so the shipped recipe's random stream is as it was.
        wrong = caption_wrong > 0 and rng.random() < caption_wrong
        caption = synth.caption_text(
            sample, misleading_letter(sample, rng.randrange(1 << 30)) if wrong else target_letter
        )
        if rng.random() < 0.3:
            caption = caption.rstrip(".") + CAPTION_HEDGE
        return Example(
            render_user(sample.question, sample.options, TEMPLATE, caption), sample.image, "", full
        )
    if kind == "think":
        prefill = f"<think>{synth.think_text(sample, target_letter)}</think>"
        return Example(user, sample.image, prefill, f"<answer>{target_letter}</answer>")
    if kind == "stop":
        return Example(user, sample.image, STOP_THINK, f"<answer>{target_letter}</answer>")
    if kind == "recover":
        wrong = misleading_letter(sample, rng.randrange(1 << 30))
        prefill = f"<think>{synth.think_text(sample, wrong)}{THINK_HEDGE}"
        return Example(user, sample.image, prefill, " " + full[len("<think>") :])
    raise ValueError(f"unknown example kind {kind!r}")


def caption_prompt(sample: Sample, rng: random.Random, wrong: bool) -> Prompt:
    """The question with a caption before it, as the correct_caption / wrong_caption variants
    write it (hedged 30% of the time, as in `caption` examples); a wrong one argues for a random
    wrong option."""
    letter = misleading_letter(sample, rng.randrange(1 << 30)) if wrong else sample.target
    caption = synth.caption_text(sample, letter)
    if rng.random() < 0.3:
        caption = caption.rstrip(".") + CAPTION_HEDGE
    return Prompt(
        sample_id=sample.sample_id,
        variant="wrong_caption" if wrong else "correct_caption",
        user=render_user(sample.question, sample.options, TEMPLATE, caption),
        image=sample.image,
        options=sample.options,
        target=sample.target,
    )


def own_examples(
    model, processor, samples: list[Sample], rng: random.Random, cfg: SFTConfig, log=print
) -> list[Example]:
    """`own` examples: the model's own greedy reasoning for each sample (`cfg.own_caption` of them
    under a caption, wrong at `cfg.caption_wrong`), then the true letter. The reasoning is kept as
    the model wrote it, right or wrong, and up to its `<answer>`: the target is the truth only, so
    the letter learns P(truth | its own reasoning, image, question). A completion without a closed
    reasoning and an `<answer>` is left out (counted in the log line)."""
    from vlmstress.models.hf import HFModel

    vlm = HFModel(model=model, processor=processor, name="sft")
    prompts = []
    for s in samples:
        if rng.random() < cfg.own_caption:
            prompts.append(caption_prompt(s, rng, wrong=rng.random() < cfg.caption_wrong))
        else:
            prompts.append(perturb(s, "base", cfg.seed))
    was_training = model.training
    model.eval()
    gens = []
    for start in range(0, len(prompts), 64):
        gens += vlm.generate(prompts[start : start + 64], max_new_tokens=64)
    model.train(was_training)
    out, kept_wrong, dropped = [], 0, 0
    for p, g in zip(prompts, gens):
        head, sep, _ = (g.text or "").partition("<answer>")
        if g.error or not sep or "</think>" not in head:
            dropped += 1
            continue
        out.append(Example(p.user, p.image, head + sep, f"{p.target}</answer>"))
        kept_wrong += parse(g.text, p.options).answer != p.target
    log(
        f"own reasoning: {len(out)} of {len(prompts)} kept ({dropped} without a closed think and an "
        f"answer), {kept_wrong} answered wrong"
        + ("; own examples are drawn as qa until a refresh keeps some" if not out else "")
    )
    return out


def canonical(sample: Sample) -> Sample:
    """The sample with its options in one fixed order per family (sorted), for a first phase."""
    opts = sorted(sample.options)
    target = letters(4)[opts.index(sample.option_text(sample.target))]
    return replace(sample, options=tuple(opts), target=target)


class Batcher:
    """Turns Examples into model inputs; the loss covers only the assistant's target tokens."""

    def __init__(self, processor):
        self.processor = processor
        self.tok = processor.tokenizer

    def prompt(self, ex: Example) -> str:
        content = ([{"type": "image"}] if ex.image is not None else []) + [{"type": "text", "text": ex.user}]
        msgs = [{"role": "user", "content": content}]
        return (
            self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + ex.prefill
        )

    def __call__(self, examples: list[Example]) -> dict:
        prompts = [self.prompt(ex) for ex in examples]
        texts = [p + ex.target + self.tok.eos_token for p, ex in zip(prompts, examples)]
        images = [ex.image for ex in examples if ex.image is not None]
        self.tok.padding_side = "right"
        try:
            enc = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True)
        finally:
            self.tok.padding_side = "left"
        labels = torch.full_like(enc["input_ids"], -100)
        lengths = enc["attention_mask"].sum(1).tolist()
        for i, (prompt, text) in enumerate(zip(prompts, texts)):
            # The target's tokens are those the full text has beyond its prompt (counted on the text,
            # before the processor expands image tokens). Counting the target on its own would be off
            # where byte-level BPE merges across the boundary (a hedge's last word with " The").
            tokens = len(self.tok(text, add_special_tokens=False)["input_ids"])
            n = tokens - len(self.tok(prompt, add_special_tokens=False)["input_ids"])
            labels[i, lengths[i] - n : lengths[i]] = enc["input_ids"][i, lengths[i] - n : lengths[i]]
            if not examples[i].letter_loss:
                # the letter is the token after the last <answer> (an added token, so the count of
                # tokens behind it is the same in the text as in the model's input)
                cut = text.rindex("<answer>") + len("<answer>") + 1
                behind = tokens - len(self.tok(text[:cut], add_special_tokens=False)["input_ids"])
                labels[i, lengths[i] - behind - 1] = -100
        enc["labels"] = labels
        return dict(enc)


def corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Text the tokenizer is trained on: every prompt and target shape of the recipe and the suite."""
    from vlmstress.perturb import VARIANTS

    texts = [STOP_THINK, DESCRIBE, CAPTION_HEDGE, THINK_HEDGE]
    rng = random.Random(seed)
    for s in synth.generate(n, seed=seed, split="train"):
        for v in VARIANTS:
            p = perturb(s, v, seed)
            texts += [p.user, p.prefill]
        texts += [answer_target(s, s.target), describe_text(s.facts), make_example("lookup", s, rng).user]
        # the chat template's role names, once per prompt as in training, so each becomes one token
        texts += ["user", "assistant"]
        find = make_example("find", s, rng)
        texts += [find.user, find.target]
    return texts


# Per merged image token (one 16 px grid cell): what a vision warm-up teaches the tower to encode.
CELL_LABELS = {
    "shape": ("none", *synth.SHAPES),
    "colour": ("none", *synth.COLOURS),
    "size": ("none", *synth.RADIUS),
    "row": tuple(range(synth.GRID)),
    "col": tuple(range(synth.GRID)),
}


def cell_labels(samples: list[Sample]) -> dict[str, torch.Tensor]:
    """Labels of every grid cell of every image, in the raster order of Qwen2.5-VL's merged tokens."""
    out: dict[str, list[int]] = {k: [] for k in CELL_LABELS}
    for s in samples:
        at = {(o["row"], o["col"]): o for o in s.facts["objects"]}
        for r in range(synth.GRID):
            for c in range(synth.GRID):
                o = at.get((r, c))
                out["shape"].append(CELL_LABELS["shape"].index(o["shape"]) if o else 0)
                out["colour"].append(CELL_LABELS["colour"].index(o["colour"]) if o else 0)
                out["size"].append(CELL_LABELS["size"].index(o["size"]) if o else 0)
                out["row"].append(r)
                out["col"].append(c)
    return {k: torch.tensor(v) for k, v in out.items()}


def pretrain_vision(model, processor, pool: list[Sample], cfg: SFTConfig, rng: random.Random, log) -> None:
    """Warm up and align the vision tower: each merged token must name its cell's object (shape,
    colour, size) and position (row, col) *in the language model's own token embeddings* (the
    logits are dot products with the embedding rows of the words "square", "white", " row 3", ...).

    Real VLMs start from a pretrained vision encoder aligned to the language model (LLaVA's stage
    one); this is ours. Image tokens then already point where the words do, so a question's
    "square" can find the square's token, and a copy head can write its colour, from the start.
    At a few milliseconds a step it teaches in a minute what the language loss alone did not in
    twenty (docs/tiny-model.md; our own runs stayed at chance for 2,500 steps without it).
    """
    visual = model.model.visual
    embed = model.get_input_embeddings()
    tok = processor.tokenizer
    width = embed.weight.shape[1]
    # each class reads the embedding row of its word (a position's word is " row 3" / " col 2", one
    # token each); a class with no one-token word ("none", "medium", which the training text never
    # writes) gets a learned vector instead
    words = {
        "row": [f" row {r + 1}" for r in CELL_LABELS["row"]],
        "col": [f" col {c + 1}" for c in CELL_LABELS["col"]],
    }
    word_ids: dict[str, list[int | None]] = {}
    for k, names in CELL_LABELS.items():
        ids = [tok(w, add_special_tokens=False)["input_ids"] for w in words.get(k, names)]
        word_ids[k] = [i[0] if len(i) == 1 and w != "none" else None for i, w in zip(ids, names)]
    spare = torch.nn.ParameterDict(
        {
            f"{k}_{j}": torch.nn.Parameter(torch.zeros(width))
            for k, ids in word_ids.items()
            for j, i in enumerate(ids)
            if i is None
        }
    )
    opt = torch.optim.AdamW(
        [*visual.parameters(), embed.weight, *spare.parameters()], lr=cfg.vision_pretrain_lr
    )
    for step in range(cfg.vision_pretrain_steps):
        batch = [pool[rng.randrange(len(pool))] for _ in range(cfg.batch_size)]
        enc = processor.image_processor(images=[s.image for s in batch], return_tensors="pt")
        feats = visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"]).pooler_output
        labels = cell_labels(batch)
        logits = {}
        for k, ids in word_ids.items():
            rows = torch.stack(
                [embed.weight[i] if i is not None else spare[f"{k}_{j}"] for j, i in enumerate(ids)]
            )
            logits[k] = feats @ rows.T
        loss = sum(torch.nn.functional.cross_entropy(logits[k], labels[k]) for k in logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step + 1 == cfg.vision_pretrain_steps:
            acc = {k: (logits[k].argmax(-1) == labels[k]).float().mean().item() for k in logits}
            log(
                f"vision step {step} loss {loss.item():.3f} "
                + " ".join(f"{k} {v:.2f}" for k, v in acc.items())
            )


def param_groups(model, cfg: SFTConfig) -> list[dict]:
    vision = [p for n, p in model.named_parameters() if ".visual." in f".{n}"]
    ids = {id(p) for p in vision}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest, "lr": cfg.lr}, {"params": vision, "lr": cfg.lr * cfg.vision_lr_mult}]


def lr_factor(step: int, cfg: SFTConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def sft_backward(model, batcher: Batcher, examples: list[Example], groups: int) -> torch.Tensor:
    """Backpropagate the batch's mean target-token loss, running it as `groups` micro-batches of
    examples of similar length: padding every example to the longest of the whole batch wastes
    compute (a recovery is twice as long as a lookup); 3 groups took a step from 0.63 to 0.58 s
    here. Weighting each micro-batch's mean by its share of target tokens keeps the loss (and the
    gradient) that of the whole batch."""
    # length in characters, an image counted as its 16 tokens' worth of text: a sort key, not a count
    examples = sorted(
        examples, key=lambda ex: len(ex.user) + len(ex.prefill) + len(ex.target) + 64 * (ex.image is not None)
    )
    size = math.ceil(len(examples) / groups)
    batches = [batcher(examples[i : i + size]) for i in range(0, len(examples), size)]
    # the model shifts labels by one before its mean, so a target token is a label after position 0
    counts = [int((b["labels"][:, 1:] != -100).sum()) for b in batches]
    total, all_targets = 0.0, sum(counts)
    for b, n in zip(batches, counts):
        loss = model(**b).loss * (n / all_targets)
        loss.backward()
        total += loss.item()
    return torch.tensor(total)


def train_sft(cfg: SFTConfig, *, log=print, evaluate=None) -> Path:
    """Train the tiny model by `cfg`; writes a checkpoint folder (safetensors) to cfg.out."""
    from vlmstress.models import tiny

    torch.manual_seed(cfg.seed)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    rng = random.Random(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.init:
        start = tiny.load_tiny(None if cfg.init == "tiny" else cfg.init)  # "tiny": the shipped weights
        model, processor, tokenizer = start.model, start.processor, start.processor.tokenizer
    else:
        tokenizer = tiny.build_tokenizer(corpus(seed=cfg.seed))
        processor = tiny.build_processor(tokenizer)
        model = tiny.new_model(tokenizer, cfg.size, seed=cfg.seed)
    model.train()
    pool = synth.generate(cfg.pool, seed=cfg.seed, split="train", hard_share=cfg.hard_share)
    batcher = Batcher(processor)
    groups = param_groups(model, cfg)
    base_lrs = [g["lr"] for g in groups]
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"tiny model: {n_params / 1e6:.2f}M parameters, {len(tokenizer)} tokens")
    t0 = time.time()
    if cfg.vision_pretrain_steps:
        pretrain_vision(model, processor, pool, cfg, rng, log)
    history = []
    uses_own = any("own" in p.mix for p in cfg.curriculum)
    own: list[Example] = []
    for step in range(cfg.max_steps):
        frac = step / cfg.max_steps
        phase = next(p for p in cfg.curriculum if frac < p.until)
        kinds, weights = zip(*phase.mix.items())
        if uses_own and step % cfg.own_refresh == 0:
            # the model's reasoning as it is now: its errors move as it trains
            chosen = rng.sample(pool, min(cfg.own_pool, len(pool)))
            own = own_examples(model, processor, chosen, rng, cfg, log)
        examples = []
        for _ in range(cfg.batch_size):
            kind = rng.choices(kinds, weights)[0]
            if kind == "own" and own:
                examples.append(own[rng.randrange(len(own))])
                continue
            if kind == "own":  # none usable yet (a model that cannot write the format): qa instead
                kind = "qa"
            s = pool[rng.randrange(len(pool))]
            if kind == "compare":  # spatial samples only: the pool's families come in turn
                s = pool[rng.randrange(len(pool) // 5) * 5]
            if not phase.shuffle_options:
                s = canonical(s)
            examples.append(make_example(kind, s, rng, cfg.caption_wrong, cfg.letter_from_own))
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * lr_factor(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss = sft_backward(model, batcher, examples, cfg.length_groups)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            log(f"step {step} loss {loss.item():.3f} {time.time() - t0:.0f}s")
        if evaluate and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps):
            model.eval()
            acc = evaluate(model, processor)
            model.train()
            history.append({"step": step + 1, "seconds": round(time.time() - t0, 1), **acc})
            log(f"eval step {step + 1}: {acc}")
    model.eval()
    tiny.save(model, processor, out)
    (out / "train_log.json").write_text(
        json.dumps({"config": cfg.model_dump(), "history": history}, indent=1)
    )
    return out


def synth_accuracy(
    model, processor, n: int = 200, seed: int = 0, hard_share: float = 0.0
) -> dict[str, float | None]:
    """Clean (base) accuracy on the synth validation split, overall and per family, with the mean
    letter entropy (nats) and ECE of the same answers: the training log's check (the test split
    stays for the final evaluation, so choosing a recipe by this log does not tune it to the test
    set)."""
    from collections import Counter

    from vlmstress.metrics import calibration, letter_entropy
    from vlmstress.models.hf import HFModel

    vlm = HFModel(model=model, processor=processor, name="sft")
    samples = synth.generate(n, seed=seed, split="val", hard_share=hard_share)
    right, total = Counter(), Counter()
    scored = []
    for start in range(0, n, 50):
        chunk = samples[start : start + 50]
        prompts = [perturb(s, "base", seed) for s in chunk]
        for s, p, g in zip(chunk, prompts, vlm.generate(prompts, max_new_tokens=64)):
            total[s.family] += 1
            right[s.family] += parse(g.text, p.options).answer == s.target
            if g.letter_probs:
                scored.append((g.letter_probs, s.target))
    acc: dict[str, float | None] = {f: round(right[f] / total[f], 3) for f in total}
    acc["all"] = round(sum(right.values()) / n, 3)
    acc["entropy"] = round(sum(letter_entropy(p) for p, _ in scored) / len(scored), 4) if scored else None
    ece = calibration(scored).ece
    acc["ece"] = None if ece is None else round(ece, 4)
    return acc

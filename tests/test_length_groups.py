"""Length-grouped GRPO batches: the cut is optimal, and TRL computes the same things through it."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
import yaml
from trl import GRPOTrainer

from vlmstress.train.config import GRPORunConfig, load_config
from vlmstress.train.length_groups import plan_groups, take_rows


def padded_cost(groups, left, right):
    return sum(len(g) * (max(left[i] for i in g) + max(right[i] for i in g)) for g in groups)


def best_cut_by_search(left, right, max_groups, min_saving):
    """Every cut into at most `max_groups` contiguous groups of the rows sorted each of the three
    ways plan_groups sorts them (by left, by right, by their sum; ties as numpy's stable sorts)."""
    n, whole = len(left), padded_cost([list(range(len(left)))], left, right)
    best = whole
    keys = [
        lambda i: (left[i], right[i]),
        lambda i: (right[i], left[i]),
        lambda i: (left[i] + right[i], left[i]),
    ]
    for key in keys:
        order = sorted(range(n), key=key)
        for k in range(1, max_groups):
            for cuts in itertools.combinations(range(1, n), k):
                groups = [order[a:b] for a, b in itertools.pairwise((0, *cuts, n))]
                best = min(best, padded_cost(groups, left, right) + k * min_saving * whole)
    return best


def test_plan_groups_finds_the_cheapest_cut():
    rng = random.Random(0)
    for _ in range(40):
        n = rng.randint(1, 9)
        left = [rng.choice([48, 49, 63, 68, 73]) for _ in range(n)]
        right = [rng.randint(0, 30) for _ in range(n)]
        max_groups = rng.randint(1, 4)
        groups = plan_groups(left, right, max_groups, min_saving=0.05)
        assert sorted(i for g in groups for i in g) == list(range(n))
        assert 1 <= len(groups) <= max_groups
        whole = padded_cost([list(range(n))], left, right)
        charged = padded_cost(groups, left, right) + (len(groups) - 1) * 0.05 * whole
        assert charged == pytest.approx(best_cut_by_search(left, right, max_groups, 0.05))


def test_plan_groups_splits_only_where_it_saves():
    assert plan_groups([48] * 8) == [list(range(8))]
    # base prompts and augmented ones apart, whatever their order in the batch
    left = [70, 48, 48, 70, 48, 48, 48, 70]
    assert sorted(map(sorted, plan_groups(left))) == [[0, 3, 7], [1, 2, 4, 5, 6]]
    assert plan_groups(left, max_groups=1) == [list(range(8))]
    # a 1-token difference does not pay for another model call
    assert len(plan_groups([48] * 10 + [49] * 10)) == 1
    assert plan_groups([]) == []


def test_plan_groups_on_a_large_batch_cuts_between_runs_of_rows():
    rng = random.Random(1)
    left = [rng.choice([48, 70]) for _ in range(3000)]
    right = [rng.randint(10, 300) for _ in range(3000)]
    groups = plan_groups(left, right)
    assert sorted(i for g in groups for i in g) == list(range(3000))
    assert 2 <= len(groups) <= 4
    assert padded_cost(groups, left, right) < 0.8 * padded_cost([list(range(3000))], left, right)


def test_take_rows_gathers_each_rows_images_and_tokens():
    # three rows with 1, 0 and 2 images; image i has grid (1, 2, i + 1) -> 2 * (i + 1) pixel rows
    num_images = [1, 0, 2]
    grid = torch.tensor([[1, 2, 1], [1, 2, 2], [1, 2, 3]])
    pixels = torch.arange(2 + 4 + 6)[:, None].repeat(1, 3)
    tokens = torch.arange(3)[:, None].repeat(1, 5)
    fields = {"pixel_values": pixels, "image_grid_thw": grid, "mm_token_type_ids": tokens}
    part = take_rows(fields, [2, 0], num_images)
    assert part["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 3], [1, 2, 1]]
    assert part["pixel_values"][:, 0].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1]
    assert part["mm_token_type_ids"][:, 0].tolist() == [2, 0]
    # the generation path's forms: numpy arrays and per-row lists
    part = take_rows({"pixel_values": pixels.numpy(), "image_grid_thw": grid.numpy()}, [0], num_images)
    assert isinstance(part["pixel_values"], np.ndarray) and part["pixel_values"][:, 0].tolist() == [0, 1]
    assert take_rows({"mm_token_type_ids": [[0], [1], [2]]}, [1], None) == {"mm_token_type_ids": [[1]]}
    # layouts it does not split are left to TRL
    assert take_rows({"pixel_values": pixels, "image_sizes": grid}, [0], num_images) is None
    assert take_rows({"pixel_values": pixels}, [0], num_images) is None


def build(tiny_ckpt, tmp):
    """A trainer on a batch of 16 rows whose prompts differ in length: 60% carry a caption or a think."""
    from vlmstress.train.grpo import build_trainer

    raw = {
        "init": f"tiny:{tiny_ckpt}",
        "data": [{"source": "synth", "n": 16}],
        "augment": {"correct_think": 0.3, "wrong_caption": 0.3, "correct_caption": 0.0, "wrong_think": 0.0},
        "num_generations": 2,
        "per_device_train_batch_size": 16,
        "max_completion_length": 12,
        "dynamics": {"n": 2, "variants": ["base"]},
    }
    tmp.mkdir(exist_ok=True)
    (tmp / "grpo.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp / "grpo.yaml", GRPORunConfig)
    return build_trainer(cfg, seed=0, out=tmp / "run", log=lambda _: None)[0]


@pytest.fixture(scope="module")
def trainer(tiny_ckpt, tmp_path_factory):
    return build(tiny_ckpt, tmp_path_factory.mktemp("groups"))


def test_sliced_weights_are_not_grouped(tiny_ckpt, tmp_path, monkeypatch):
    """Under ZeRO-3 / FSDP each model call gathers the weights: one call, as TRL makes it."""
    assert build(tiny_ckpt, tmp_path / "whole").length_groups == 4
    monkeypatch.setattr("vlmstress.train.length_groups.weights_sharded", lambda accelerator: True)
    assert build(tiny_ckpt, tmp_path / "sliced").length_groups == 1


def generate(trainer, batch, groups):
    trainer.length_groups = groups
    torch.manual_seed(0)
    with torch.no_grad():
        return trainer._generate_and_score_completions(batch)


def test_grouped_generation_gives_each_prompt_its_own_greedy_completion(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.generation_config.do_sample = False
    try:
        grouped, whole = generate(trainer, batch, 4), generate(trainer, batch, 1)
    finally:
        trainer.generation_config.do_sample = True
    prompt_lengths = grouped["prompt_mask"].sum(1).tolist()
    assert len(plan_groups(prompt_lengths)) >= 2  # the batch was really cut
    assert torch.equal(grouped["prompt_ids"], whole["prompt_ids"])
    assert torch.equal(grouped["completion_ids"], whole["completion_ids"])


def test_grouped_scoring_gives_trls_log_probabilities_loss_and_gradient(trainer):
    """Completions cut to random lengths so both ends of each group are trimmed; TRL's own ungrouped
    method is the reference (on the same trainer, called past the override)."""
    batch = next(iter(trainer.get_train_dataloader()))
    inputs = generate(trainer, batch, 4)
    rng = torch.Generator().manual_seed(0)
    width = inputs["completion_ids"].size(1)
    lengths = torch.randint(1, width + 1, (len(batch),), generator=rng)
    keep = torch.arange(width)[None, :] < lengths[:, None]
    inputs["completion_mask"] = inputs["completion_mask"] * keep
    inputs["completion_ids"] = inputs["completion_ids"].masked_fill(
        ~keep, trainer.processing_class.tokenizer.pad_token_id
    )
    assert len(plan_groups(inputs["prompt_mask"].sum(1).tolist(), lengths.tolist())) >= 2
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    fields = {k: inputs[k] for k in ("pixel_values", "image_grid_thw", "num_images", "mm_token_type_ids")}
    model = trainer.model
    model.eval()
    with torch.no_grad():
        ours = trainer._get_per_token_logps_and_entropies(
            model, ids, mask, width, compute_entropy=True, **fields
        )
        trl = GRPOTrainer._get_per_token_logps_and_entropies(
            trainer, model, ids, mask, width, compute_entropy=True, **fields
        )
    real = inputs["completion_mask"].bool()
    for a, b in zip(ours[:2], trl[:2], strict=True):
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)

    def loss_and_grads(groups):
        trainer.length_groups = groups
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(inputs))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    # advantages that are not all zero, so the policy gradient is not
    inputs["advantages"] = torch.randn(len(batch), generator=rng)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train, which is not running
    model.train()
    (loss4, grads4), (loss1, grads1) = loss_and_grads(4), loss_and_grads(1)
    torch.testing.assert_close(loss4, loss1, atol=1e-6, rtol=1e-5)
    assert len(grads4) == len(grads1) > 0
    for g4, g1 in zip(grads4, grads1, strict=True):
        torch.testing.assert_close(g4, g1, atol=1e-6, rtol=1e-4)
    model.zero_grad()

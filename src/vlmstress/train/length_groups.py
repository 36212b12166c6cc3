"""Length-grouped generation and scoring for TRL's GRPOTrainer: less compute spent on padding.

On its transformers path, TRL generates a whole generation batch in one `generate` call, left-padded
to its longest prompt, and scores it in one forward pass padded to the longest prompt plus the
longest completion. Adversarial augmentation makes a few prompts much longer than the rest (a caption
or a think prefill takes the tiny model's prompts from 48 to 63-73 tokens), so with 10% of each
variant nearly every row was padded to an augmented one: a GRPO step took x1.23-1.31 as long as
without augmentation (benchmarks/grpo_step.py). Completions vary too (14-31 tokens in one batch).

`LengthGroupedGRPOTrainer` changes only how TRL's two batched model calls are cut: it sorts the rows
by length, splits them into at most `length_groups` groups chosen to minimise padded tokens
(`plan_groups`), runs TRL's own method on each group with that group's padding only, and puts the
results back in the batch's order. Everything TRL does next (rewards, advantages, the loss over the
whole batch, its normalisation) is unchanged: the log-probabilities equal the ungrouped forward's to
float rounding, and greedy completions are the same (tests/test_length_groups.py). Sampling draws
from the same distribution, in another order of random numbers.

Only layouts split row by row here are grouped: text only, and images in the Qwen-VL layout
(`pixel_values` rows per image from `image_grid_thw`). Any other layout, vLLM, TRL's continuous
batching and sliced weights (ZeRO-3, FSDP) go through TRL unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from trl import GRPOTrainer

from vlmstress.train.sharding import weights_sharded

# A further group must save this share of the whole batch's padded tokens: one more model call costs
# a little (and on a GPU smaller batches use it less well), so near-equal lengths stay together.
MIN_SAVING = 0.05
# plan_groups works on at most this many units (its tables are units^2): larger batches are cut
# between runs of sorted rows.
MAX_UNITS = 512

# Per-row fields the grouping knows how to split; a model call with any other field is left alone.
_IMAGE_FIELDS = {"pixel_values", "image_grid_thw"}
_TOKEN_FIELDS = {"token_type_ids", "mm_token_type_ids"}


def plan_groups(
    left: Sequence[int],
    right: Sequence[int] | None = None,
    max_groups: int = 4,
    min_saving: float = MIN_SAVING,
) -> list[list[int]]:
    """Row indices in groups: rows sorted by length, cut where padding is cheapest.

    A row is `left` tokens left-padded (a prompt) followed by `right` tokens right-padded (a
    completion; none when generating), so a group is as wide as its longest left plus its longest
    right part and costs rows x width tokens. The rows are sorted three ways (by left, by right, by
    their sum: which is best depends on which part varies more); for each, an exact dynamic
    programme finds the cut into at most `max_groups` contiguous groups of least cost, each group
    beyond the first charged `min_saving` of the whole batch's cost; the cheapest of the three wins.
    No library offers this 1-D partition; numpy does it in ~5 ms for 256 rows."""
    left_arr = np.asarray(left, dtype=np.int64)
    n = len(left_arr)
    if n == 0:
        return []
    right_arr = np.zeros(n, dtype=np.int64) if right is None else np.asarray(right, dtype=np.int64)
    orders = [np.lexsort((right_arr, left_arr))]
    if right is not None:
        orders += [np.lexsort((left_arr, right_arr)), np.lexsort((left_arr, left_arr + right_arr))]
    _, groups = min(
        (_best_cut(o, left_arr, right_arr, max_groups, min_saving) for o in orders), key=lambda c: c[0]
    )
    return groups


def _best_cut(
    order: np.ndarray, left: np.ndarray, right: np.ndarray, max_groups: int, min_saving: float
) -> tuple[float, list[list[int]]]:
    """(charged cost, groups) of the best cut of the rows in `order` (plan_groups). Batches of more
    than MAX_UNITS rows are cut between runs of equally many rows instead of between rows."""
    n = len(order)
    starts = np.arange(0, n, -(-n // MAX_UNITS))  # units: runs of rows, one row each up to MAX_UNITS
    m = len(starts)
    lefts = np.maximum.reduceat(left[order], starts)
    rights = np.maximum.reduceat(right[order], starts)
    rows_before = np.append(starts, n)  # rows_before[i]: rows before unit i
    # cost[i, j]: units i..j as one group
    upper = np.triu(np.ones((m, m), dtype=bool))
    left_max = np.maximum.accumulate(np.where(upper, lefts[None, :], 0), axis=1)
    right_max = np.maximum.accumulate(np.where(upper, rights[None, :], 0), axis=1)
    sizes = rows_before[None, 1:] - rows_before[:-1, None]
    cost = np.where(upper, sizes * (left_max + right_max), np.inf)
    overhead = min_saving * cost[0, m - 1]
    best = cost[0].copy()  # best[j]: units 0..j in the groups so far
    cuts: list[np.ndarray] = []  # cuts[k][j]: first unit of the last group in the best k+2 groups
    totals = [best[m - 1]]
    for _ in range(1, min(max_groups, m)):
        # a new last group i..j after the best cover of units 0..i-1
        candidates = np.full((m, m), np.inf)
        candidates[1:] = best[:-1, None] + cost[1:]
        start = candidates.argmin(axis=0)
        best = candidates[start, np.arange(m)]
        cuts.append(start)
        totals.append(best[m - 1])
    charged = [t + k * overhead for k, t in enumerate(totals)]
    extra = int(np.argmin(charged))  # groups beyond the first
    if extra == 0:
        return charged[0], [list(range(n))]  # one group: the batch as it is
    bounds, end = [], m
    for k in range(extra - 1, -1, -1):
        first = int(cuts[k][end - 1])
        bounds.append((first, end))
        end = first
    bounds.append((0, end))
    return charged[extra], [order[rows_before[a] : rows_before[b]].tolist() for a, b in reversed(bounds)]


def _take(value: Any, rows: Sequence[int]) -> Any:
    """`value` at `rows` (first axis), for a tensor, a numpy array or a list."""
    if isinstance(value, torch.Tensor):
        return value[torch.as_tensor(rows, dtype=torch.long, device=value.device)]
    if isinstance(value, np.ndarray):
        return value[np.asarray(rows, dtype=np.int64)]
    return [value[i] for i in rows]


def take_rows(
    fields: Mapping[str, Any], rows: Sequence[int], num_images: Sequence[int] | None
) -> dict | None:
    """The multimodal fields of a batch's `rows`; None when a field is not one this module splits.

    `num_images[r]` is row r's image count. In the Qwen-VL layout `image_grid_thw` has one (t, h, w)
    per image and `pixel_values` t*h*w rows per image, images in row order."""
    fields = {k: v for k, v in fields.items() if v is not None}
    if not set(fields) <= _IMAGE_FIELDS | _TOKEN_FIELDS:
        return None
    out = {k: _take(v, rows) for k, v in fields.items() if k in _TOKEN_FIELDS}
    if not _IMAGE_FIELDS & set(fields):
        return out
    if not set(fields) >= _IMAGE_FIELDS or num_images is None:
        return None
    grid = fields["image_grid_thw"]
    patches = np.asarray(grid.cpu() if isinstance(grid, torch.Tensor) else grid).prod(axis=-1)
    image_start = np.concatenate([[0], np.cumsum(num_images)])
    patch_start = np.concatenate([[0], np.cumsum(patches)])
    images = [i for r in rows for i in range(image_start[r], image_start[r + 1])]
    pixel_rows = [p for i in images for p in range(patch_start[i], patch_start[i + 1])]
    out["image_grid_thw"] = _take(grid, images)
    out["pixel_values"] = _take(fields["pixel_values"], pixel_rows)
    return out


class LengthGroupedGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer whose generation and log-probability passes run in length groups."""

    def __init__(self, *args: Any, length_groups: int = 4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Under ZeRO-3 and FSDP every model call gathers the sliced weights anew: more calls would
        # cost more in communication than the padding saves.
        self.length_groups = 1 if weights_sharded(self.accelerator) else length_groups

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, *args, **kwargs):
        ungrouped = self.use_vllm or getattr(self, "use_transformers_continuous_batching", False)
        groups = [] if ungrouped else plan_groups([len(p) for p in prompt_ids], max_groups=self.length_groups)
        num_images = None if images is None else [len(im) if im else 0 for im in images]
        parts = [take_rows(multimodal_fields, rows, num_images) for rows in groups]
        if len(groups) < 2 or any(p is None for p in parts):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs)
        completions: list[Any] = [None] * len(prompt_ids)
        for rows, fields in zip(groups, parts, strict=True):
            ids, _ = super()._generate_single_turn(
                _take(prompt_ids, rows),
                None if images is None else _take(images, rows),
                fields,
                *args,
                **kwargs,
            )
            for r, c in zip(rows, ids, strict=True):
                completions[r] = c
        return completions, None  # the transformers path returns no sampling logprobs either

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, **kwargs
    ):
        flags = {k: kwargs.pop(k) for k in ("compute_entropy", "compute_aux_loss") if k in kwargs}
        num_images = kwargs.pop("num_images", None)
        prompt_width = input_ids.size(1) - logits_to_keep
        mask = attention_mask.bool()
        left = mask[:, :prompt_width].sum(1)
        right = mask[:, prompt_width:].sum(1)
        # Trimming assumes TRL's layout: prompts left-padded, completions right-padded.
        steps = torch.diff(mask.int(), dim=1)
        packed = bool((steps[:, : prompt_width - 1] >= 0).all() and (steps[:, prompt_width:] <= 0).all())
        groups = plan_groups(left.tolist(), right.tolist(), self.length_groups) if packed else []
        parts = [take_rows(kwargs, rows, num_images) for rows in groups]
        if len(groups) < 2 or any(p is None for p in parts):
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size,
                num_images=num_images,
                **flags,
                **kwargs,
            )
        logps, entropies, aux = [], [], []
        for rows, fields in zip(groups, parts, strict=True):
            index = torch.as_tensor(rows, device=input_ids.device)
            lo = prompt_width - int(left[index].max())
            keep = max(int(right[index].max()), 1)
            cols = slice(lo, prompt_width + keep)
            for k in _TOKEN_FIELDS & set(fields):
                fields[k] = fields[k][:, cols]
            lp, ent, aux_loss = super()._get_per_token_logps_and_entropies(
                model,
                input_ids[index, cols],
                attention_mask[index, cols],
                keep,
                batch_size,
                num_images=None if num_images is None else _take(num_images, rows),
                **flags,
                **fields,
            )
            # positions past a group's longest completion are padding for every row in it: zeros
            logps.append(F.pad(lp, (0, logits_to_keep - keep)))
            entropies.append(None if ent is None else F.pad(ent, (0, logits_to_keep - keep)))
            aux.append(aux_loss)
        back = torch.as_tensor(np.argsort(np.concatenate(groups)), device=input_ids.device)
        entropy = None if entropies[0] is None else torch.cat(entropies)[back]
        aux_loss = None if aux[0] is None else torch.stack(aux).mean()
        return torch.cat(logps)[back], entropy, aux_loss

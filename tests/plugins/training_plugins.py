"""A user augmentation kind and a user training source, for tests/test_registries.py.

- augmentation kind `shuffled_options`: the base prompt with its options in another order (drawn
  from the seed and the sample id), the target letter moved with its option;
- training source `file`: the samples of a local data file (`data_dir: FILE`, any format `vlmstress
  eval --data` reads), the first `n` of them.
"""

import random
from dataclasses import replace
from pathlib import Path

from vlmstress import register_augmentation, register_source
from vlmstress.data.files import load_file
from vlmstress.data.schema import letters
from vlmstress.perturb import NotApplicable, build_prompt


@register_augmentation("shuffled_options")
def shuffled_options(sample, seed, template):
    if sample.target is None or len(sample.options) < 2:
        raise NotApplicable("shuffled_options needs a multiple-choice sample with a target")
    order = list(range(len(sample.options)))
    random.Random(f"shuffle:{seed}:{sample.sample_id}").shuffle(order)
    options = tuple(sample.options[i] for i in order)
    target = letters(len(options))[order.index(letters(len(options)).index(sample.target))]
    prompt = build_prompt(sample, "shuffled_options", template, options=options)
    return replace(prompt, target=target)


@register_source("file")
def file_source(*, seed, data_dir, n=None):
    return load_file(Path(data_dir).expanduser(), limit=n)

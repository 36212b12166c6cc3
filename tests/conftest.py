"""Shared fixtures: a random test-size tiny Qwen2.5-VL checkpoint, built once per session."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Two OpenMP threads on a busy 2-core machine are ~10x slower than one for these tiny tensors.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from vlmstress.models import tiny
    from vlmstress.train.sft import corpus

    tokenizer = tiny.build_tokenizer(corpus(n=100))
    processor = tiny.build_processor(tokenizer)
    model = tiny.new_model(tokenizer, "test", seed=0)
    out = tmp_path_factory.mktemp("tiny")
    tiny.save(model, processor, out)
    return out

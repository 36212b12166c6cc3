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


@pytest.fixture
def registries(monkeypatch):
    """Every registry (variants, templates, backends, judges, metrics, rewards, augmentation kinds,
    training sources), the files --include imported and the plugins loaded, put back as they were
    after the test: what a test registers does not leak into the next one."""
    import sys

    from vlmstress import plugins
    from vlmstress.registry import Registry

    for registry in Registry.instances:
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_origins", dict(registry._origins))
    monkeypatch.setattr(plugins, "_LOADED", dict(plugins._LOADED))
    monkeypatch.setattr(plugins, "_PLUGINS", dict(plugins._PLUGINS))
    monkeypatch.setattr(plugins, "_SCANNED", plugins._SCANNED)
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        if name.startswith("vlmstress_include_"):
            del sys.modules[name]

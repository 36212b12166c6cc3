"""The hf backend's image cache: a sample's image decoded and processed once for all its variants,
the same records as without it, memory within its budget, and no caching where the image processor
batches images together. All on the real tiny model, the real runner and real image processors."""

from __future__ import annotations

import pytest
import transformers

import vlmstress.data.images
from vlmstress.data import synth
from vlmstress.models.image_cache import _independent
from vlmstress.models.registry import load_model
from vlmstress.perturb import resolve_variants
from vlmstress.runner import RunSpec, run_in_memory

K = 3
VARIANTS = resolve_variants("all")


@pytest.fixture(scope="module")
def samples():
    return synth.generate(K, seed=0, split="test")


def counted_run(tiny_ckpt, samples, monkeypatch, budget: int | None = None):
    """A K-sample x 9-variant run on a fresh tiny model: (records, images decoded, sample images
    through the real image processor, the model)."""
    model = load_model(f"tiny:{tiny_ckpt}")
    if budget is not None:
        model.image_cache_bytes = budget
    calls = {"decoded": 0, "processed": 0}
    load_images = vlmstress.data.images.load_images

    def decoding(refs, **kw):
        calls["decoded"] += len(refs)
        return load_images(refs, **kw)

    image_processor = type(model.processor.image_processor)
    process = image_processor.__call__

    def processing(self, images, **kw):
        # The cache's one-time check runs on two images of its own (72x56 and 40x600): not counted.
        calls["processed"] += sum(im.size == (64, 64) for im in images)
        return process(self, images, **kw)

    monkeypatch.setattr(vlmstress.data.images, "load_images", decoding)
    monkeypatch.setattr(image_processor, "__call__", processing)
    spec = RunSpec(model="tiny", data=f"synth:{K}", variants=VARIANTS, batch_size=4, max_new_tokens=8)
    records, _ = run_in_memory(model, samples, spec)
    monkeypatch.undo()
    assert len(records) == K * len(VARIANTS) and not any(r["error"] for r in records)
    return records, calls["decoded"], calls["processed"], model


def test_each_samples_image_is_decoded_and_processed_once_for_all_its_variants(
    tiny_ckpt, samples, monkeypatch
):
    cached, decoded, processed, _ = counted_run(tiny_ckpt, samples, monkeypatch)
    assert (decoded, processed) == (K, K)
    # Without the cache every prompt decodes and processes its image, and processes it again for its
    # forced score (max 8 new tokens: completions that end before an answer): what the count catches.
    plain, decoded, processed, _ = counted_run(tiny_ckpt, samples, monkeypatch, budget=0)
    forced = sum(r["score_source"] == "forced" for r in plain)
    assert forced > 0
    assert (decoded, processed) == (K * len(VARIANTS), K * len(VARIANTS) + forced)
    assert cached == plain


def test_the_cache_stays_within_its_budget(tiny_ckpt, samples, monkeypatch):
    # One 64 px sample's entry is 64x64x3 decoded bytes + 64 patches x 384 float32 processed ones;
    # a budget of one and a half entries keeps one sample, so the variant-by-variant plan (every
    # sample, then every sample again) finds nothing to reuse and processes as without a cache.
    budget = int(1.5 * (64 * 64 * 3 + 64 * 384 * 4))
    records, _, processed, model = counted_run(tiny_ckpt, samples, monkeypatch, budget=budget)
    assert 0 < model._image_cache.nbytes <= budget and len(model._image_cache._entries) == 1
    # Nothing is reused across variants (and a batch's other images are gone by its forced pass).
    assert processed >= K * len(VARIANTS)
    plain, *_ = counted_run(tiny_ckpt, samples, monkeypatch, budget=0)
    assert records == plain


@pytest.mark.parametrize(
    "name, independent",
    [
        ("Qwen2VLImageProcessorPil", True),  # patches of each image, concatenated
        ("CLIPImageProcessorPil", True),  # a fixed-size resize of each
        ("Gemma3ImageProcessorPil", True),
        ("LlavaOnevisionImageProcessorPil", False),  # pads a batch to its most tiles
        ("Idefics3ImageProcessorPil", False),  # pads a batch to its largest image
        ("Idefics2ImageProcessorPil", False),
    ],
)
def test_images_are_cached_only_where_the_image_processor_treats_them_independently(name, independent):
    assert _independent(getattr(transformers, name)(), {"return_tensors": "pt"}) is independent

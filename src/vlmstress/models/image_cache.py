"""A sample's images decoded and run through the image processor once, for all its prompts.

Every variant of a sample shows the same images (perturbations change text only), so the `hf:`
backend keeps, per image reference, the decoded image and what the image processor made of it, and
hands both to the sample's next prompt instead of decoding and processing again. References are
matched by identity (a Sample's image is the same object in every Prompt built from it); an entry
holds its references, so an id cannot be reused while it is cached.

The processor's own call still builds every batch (placeholder expansion, tokenising, padding):
it is given a copy of the processor whose image processor answers from the cache, processing each
missing image alone and concatenating the per-image outputs. That is the batch output only if the
image processor treats each image independently (Qwen2-VL's patches, fixed-size resizes); processors
that pad to the batch's largest image do not, so the concatenation is checked once per processor on
two images of different sizes, and a processor that fails the check is used as it is (no cache).

Memory is bounded by `budget` bytes (decoded pixels plus processed tensors), least recently used
entries going first. The runner's plan is variant by variant, so a sample's next variant comes one
pass over the samples later: images are reused across variants while a run's images fit the budget,
and processed once per prompt, as without a cache, beyond it.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 64 * 2**20


@dataclass
class _Entry:
    refs: tuple  # held, so that the ids in the key stay theirs
    images: list  # decoded
    features: list = field(default_factory=list)  # per image: the image processor's output, or None
    nbytes: int = 0


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, np.ndarray):
        return value.nbytes
    return 0


def _pixels_nbytes(image: Any) -> int:
    return image.width * image.height * len(image.getbands())


def concat(outputs: Sequence[Any]) -> dict | None:
    """Per-image outputs of an image processor joined along the first axis, as one call on all the
    images would give them when it treats images independently; None if some value is not an array."""
    joined = {}
    for key in outputs[0]:
        values = [out[key] for out in outputs]
        if all(isinstance(v, torch.Tensor) for v in values):
            joined[key] = torch.cat(values)
        elif all(isinstance(v, np.ndarray) for v in values):
            joined[key] = np.concatenate(values)
        else:
            return None
    return joined


def _same(a: dict | None, b: Any) -> bool:
    if a is None or set(a) != set(b.keys()):
        return False
    for key, x in a.items():
        y = b[key]
        if type(x) is not type(y) or x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not (torch.equal(x, y) if isinstance(x, torch.Tensor) else np.array_equal(x, y)):
            return False
    return True


def _independent(processor: Any, kwargs: dict) -> bool:
    """Whether `processor` (an image processor) gives, for two images of different sizes and shapes,
    the concatenation of what it gives for each alone: only then may per-image outputs be cached.
    (A square-ish and a very wide image: LLaVA-OneVision cuts them into different numbers of tiles
    and pads a batch to the most, so it fails here, as it must.)"""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((72, 56), (40, 600))
    ]
    try:
        together = processor(images, **kwargs)
        return _same(concat([processor([im], **kwargs) for im in images]), together)
    except Exception:  # a processor that cannot do this is used as it is
        return False


class ImageCache:
    """Decoded and processed images of recent prompts, by image reference (see the module docstring)."""

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self.nbytes = 0
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()
        self._by_image: dict[int, tuple[_Entry, int]] = {}  # id(decoded image) -> (entry, index)
        self._checked: dict[int, tuple[Any, bool]] = {}  # id(image processor) -> (it, independent)

    def images(self, refs: Sequence[Any]) -> list:
        """`refs` decoded (vlmstress.data.images.load_images; its ImageError is raised, not cached)."""
        from vlmstress.data.images import load_images

        key = tuple(map(id, refs))
        entry = self._entries.get(key)
        if entry is not None and all(a is b for a, b in zip(entry.refs, refs, strict=True)):
            self._entries.move_to_end(key)
            return entry.images
        images = load_images(refs)
        if self.budget > 0:
            entry = _Entry(tuple(refs), images, [None] * len(images))
            self._entries[key] = entry
            for i, im in enumerate(images):
                self._by_image[id(im)] = (entry, i)
            self._grow(entry, sum(map(_pixels_nbytes, images)))
        return images

    def process(self, processor: Any, images: Any, kwargs: dict) -> Any:
        """What `processor(images, **kwargs)` returns, each cached image processed only once."""
        entries = [self._entry_of(im) for im in images] if isinstance(images, list) else []
        if not any(entries) or not self._may_cache(processor, kwargs):
            return processor(images, **kwargs)  # nothing from the cache here: one call, as without it
        outputs = []
        for im, found in zip(images, entries, strict=True):
            if found is None:  # not from the cache (evicted, or never kept): processed, not kept
                outputs.append(processor([im], **kwargs))
                continue
            entry, i = found
            if entry.features[i] is None:
                entry.features[i] = dict(processor([im], **kwargs))
                if entry is self._entries.get(tuple(map(id, entry.refs))):
                    self._grow(entry, sum(_nbytes(v) for v in entry.features[i].values()))
            outputs.append(entry.features[i])
        try:
            joined = concat(outputs)
        except (RuntimeError, ValueError):  # shapes the check did not meet: not independent after all
            joined = None
        if joined is None:
            self._checked[id(processor)] = (processor, False)
            log.info("%s does not process images independently: not cached", type(processor).__name__)
            return processor(images, **kwargs)
        from transformers.feature_extraction_utils import BatchFeature

        return BatchFeature(joined)

    def _entry_of(self, image: Any) -> tuple[_Entry, int] | None:
        found = self._by_image.get(id(image))
        return found if found is not None and found[0].images[found[1]] is image else None

    def _may_cache(self, processor: Any, kwargs: dict) -> bool:
        seen = self._checked.get(id(processor))
        if seen is None or seen[0] is not processor:
            seen = (processor, _independent(processor, kwargs))
            self._checked[id(processor)] = seen
            if not seen[1]:
                log.info("%s does not process images independently: not cached", type(processor).__name__)
        return seen[1]

    def _grow(self, entry: _Entry, nbytes: int) -> None:
        entry.nbytes += nbytes
        self.nbytes += nbytes
        while self.nbytes > self.budget and self._entries:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.nbytes
            for im in old.images:
                self._by_image.pop(id(im), None)


class _CachingImageProcessor:
    """An image processor that answers from an ImageCache; everything else is the wrapped one's."""

    def __init__(self, inner: Any, cache: ImageCache) -> None:
        self._inner, self._cache = inner, cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, images: Any = None, **kwargs: Any) -> Any:
        return self._cache.process(self._inner, images, kwargs)


def caching_processor(processor: Any, cache: ImageCache) -> Any:
    """A shallow copy of `processor` whose image processor answers from `cache` (the processor itself
    is left as it is); `processor` itself when it has no image processor."""
    inner = getattr(processor, "image_processor", None)
    if inner is None:
        return processor
    wrapped = copy.copy(processor)
    wrapped.image_processor = _CachingImageProcessor(inner, cache)
    return wrapped

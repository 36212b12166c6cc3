"""Training data for GRPO: the paper's SAT and Pixmo-Count, and the synthetic train split.

Every source becomes multiple-choice Samples (the same type evaluation reads), so augmentation can
apply the evaluation's perturbations and the accuracy reward can compare answer letters.

- `sat` (hub `array/SAT`, Ray et al., "SAT: Spatial Aptitude Training"): parquet files
  `SAT_{train,static,val,test}.parquet` with columns `image_bytes` (a list of images: one for static
  questions, two for motion ones), `question`, `answers` (the choices, correct one first: the README
  asks users to shuffle them), `correct_answer` (its text) and `question_type`. Options are shuffled
  per sample from the seed and the id. The default split is `static` (one image per question).
- `pixmo-count` (hub `allenai/pixmo-count`): columns `image_url`, `image_sha256`, `count`, `points`,
  `label`; the images are *not* in the repository. A local copy keeps them beside the parquet files
  as `images/<image_sha256>.<ext>` (or rows carry an `image` column, as re-hosted copies do);
  `download_images` fetches the URLs instead, checked against `image_sha256`. A count becomes a
  four-option question: the true count and three nearby wrong ones, in ascending order.
- `synth`: vlmstress's own generator, `split="train"` (disjoint from evaluation's test and val).

Users add sources with `register_source`.

Local copies are laid out as the hub repository (`data_dir`); without one, rows come from the hub
through `datasets` (which honours HF_HUB_OFFLINE and its cache), streamed when only `n` are wanted.
"""

from __future__ import annotations

import hashlib
import random
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from vlmstress.data.files import BadRow, RowError, is_missing, read_rows, resolve_image, text_field
from vlmstress.data.schema import Sample, letters
from vlmstress.errors import UsageError
from vlmstress.registry import Registry, call_error

SAT_HUB_ID = "array/SAT"
PIXMO_COUNT_HUB_ID = "allenai/pixmo-count"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
DEFAULT_SPLIT = {"synth": "train", "sat": "static", "pixmo-count": "train"}

Row = dict[str, Any]


# ---------------------------------------------------------------------------------------------------
# Rows -> Samples


def _shuffled(rng: random.Random, items: list[str]) -> list[str]:
    items = list(items)
    rng.shuffle(items)
    return items


def sat_sample(row: Row, index: int, *, split: str, seed: int, base_dir: Path = Path(".")) -> Sample:
    """One SAT row as a Sample; options shuffled from (seed, id) since SAT lists the answer first."""
    sample_id = f"sat-{split}-{index}"
    question = text_field(row, "question")
    answers = [str(a).strip() for a in (row.get("answers") or []) if not is_missing(a)]
    correct = text_field(row, "correct_answer")
    if not question or len(answers) < 2 or correct not in answers:
        raise RowError("needs a question, two or more answers and a correct_answer among them")
    images = [resolve_image(im, base_dir, "image_bytes") for im in (row.get("image_bytes") or [])]
    if not images:
        raise RowError("no image in image_bytes")
    options = _shuffled(random.Random(f"sat:{seed}:{sample_id}"), answers)
    target = letters(len(options))[options.index(correct)]
    meta: dict[str, Any] = {"question_type": row.get("question_type")}
    if len(images) > 1:
        meta["images"] = images
    return Sample(
        sample_id=sample_id,
        question=question,
        options=tuple(options),
        target=target,
        answer_text=correct,
        image=images[0],
        family=row.get("question_type") or "sat",
        meta=meta,
    )


def count_options(count: int, rng: random.Random, n: int = 4) -> tuple[str, ...]:
    """The true count and n - 1 wrong counts close to it (never negative), ascending."""
    near = [c for c in range(max(0, count - n), count + n + 1) if c != count]
    near.sort(key=lambda c: (abs(c - count), c))
    wrong = rng.sample(near[: 2 * (n - 1)], n - 1)
    return tuple(str(c) for c in sorted([count, *wrong]))


def pixmo_count_sample(row: Row, index: int, *, split: str, seed: int, image: Any) -> Sample:
    """One Pixmo-Count row as a four-option counting question about its `label`."""
    sample_id = f"pixmo-count-{split}-{index}"
    label = text_field(row, "label")
    count = row.get("count")
    if not label or is_missing(count):
        raise RowError("needs a label and a count")
    count = int(count)
    options = count_options(count, random.Random(f"pixmo-count:{seed}:{sample_id}"))
    target = letters(len(options))[options.index(str(count))]
    return Sample(
        sample_id=sample_id,
        question=f"How many {label} are there in the image?",
        options=options,
        target=target,
        answer_text=str(count),
        image=image,
        family="count",
        meta={"image_sha256": row.get("image_sha256"), "image_url": row.get("image_url")},
    )


# ---------------------------------------------------------------------------------------------------
# Pixmo-Count images


class PixmoImages:
    """Where a Pixmo-Count row's image is: an `image` column, a local `images/<sha256>.<ext>`, or
    (with `download`) its URL, fetched once into `cache` and checked against `image_sha256`."""

    def __init__(self, image_dir: Path | None, cache: Path, download: bool) -> None:
        self.image_dir, self.cache, self.download = image_dir, cache, download
        self._local: dict[str, Path] | None = None

    def __call__(self, row: Row, base_dir: Path) -> Any:
        if not is_missing(row.get("image")):
            return resolve_image(row["image"], base_dir)
        sha = row.get("image_sha256") or ""
        local = self._find(sha)
        if local is not None:
            return str(local)
        if self.download and row.get("image_url"):
            return str(self._fetch(str(row["image_url"]), sha))
        raise RowError(
            f"image {sha or row.get('image_url')} not found locally (set download_images to fetch it)"
        )

    def _find(self, sha: str) -> Path | None:
        if not sha:
            return None
        if self._local is None:  # one directory listing, not one stat per suffix per row
            self._local = {}
            for d in (self.image_dir, self.cache):
                if d is not None and d.is_dir():
                    for p in d.iterdir():
                        if p.suffix.lower() in IMAGE_SUFFIXES or p.suffix == ".img":
                            self._local.setdefault(p.stem, p)
        return self._local.get(sha)

    def _fetch(self, url: str, sha: str) -> Path:
        self.cache.mkdir(parents=True, exist_ok=True)
        name = sha or hashlib.sha256(url.encode()).hexdigest()
        path = self.cache / f"{name}.img"
        if not path.exists():
            try:
                with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - dataset URLs are http(s)
                    data = r.read()
            except Exception as exc:  # a dead link is one skipped row, never a crashed load
                raise RowError(f"cannot fetch {url}: {type(exc).__name__}") from None
            if sha and hashlib.sha256(data).hexdigest() != sha:
                raise RowError(f"{url} does not match its image_sha256")
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(path)
        if self._local is not None:
            self._local[name] = path
        return path


# ---------------------------------------------------------------------------------------------------
# Sources


def _local_rows(
    data_dir: Path, patterns: Iterable[str], limit: int | None
) -> tuple[list[Row | BadRow], Path]:
    """Rows of the first pattern that matches files under `data_dir` (or `data_dir` itself, a file)."""
    if data_dir.is_file():
        return read_rows(data_dir, limit=limit), data_dir.parent
    for pattern in patterns:
        files = sorted(p for p in data_dir.glob(pattern) if p.is_file())
        if files:
            rows: list[Row | BadRow] = []
            for f in files:
                rows += read_rows(f, limit=None if limit is None else limit - len(rows))
                if limit is not None and len(rows) >= limit:
                    break
            return rows, files[0].parent
    raise UsageError(f"no files matching {', '.join(patterns)} under {data_dir}")


def _hub_rows(hub_id: str, split: str, limit: int | None) -> list[Row]:
    import datasets  # a slow import that only hub loading needs

    try:
        ds = datasets.load_dataset(hub_id, split=split, streaming=limit is not None)
    except Exception as exc:  # offline without a cache, unknown repo, ...: the user must supply the data
        msg = " ".join(str(exc).split())[:200]
        raise UsageError(
            f"cannot load {hub_id} split {split} from the hub: {msg}; set data_dir to a local copy"
        ) from None
    # Keep images encoded ({"bytes", "path"}): decoding 30K images up front would take gigabytes.
    for col, feature in (ds.features or {}).items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
        elif isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.Image):
            ds = ds.cast_column(col, datasets.List(datasets.Image(decode=False)))
    return list(islice(ds, limit) if limit is not None else ds)


def _convert(rows: list[Row | BadRow], make: Callable[[Row, int], Sample], name: str) -> list[Sample]:
    samples = []
    for i, row in enumerate(rows):
        try:
            if isinstance(row, BadRow):
                raise RowError(row.error)
            samples.append(make(row, i))
        except RowError as exc:
            samples.append(Sample(sample_id=f"{name}-{i}", question="", error=str(exc)))
    return samples


def load_sat(
    *,
    data_dir: str | Path | None = None,
    hub_id: str = SAT_HUB_ID,
    split: str = "static",
    limit: int | None = None,
    seed: int = 0,
) -> list[Sample]:
    """SAT samples from a local copy (`SAT_<split>.parquet` under data_dir, or one file) or the hub."""
    if data_dir is not None:
        rows, base = _local_rows(Path(data_dir).expanduser(), (f"SAT_{split}.*", f"**/SAT_{split}.*"), limit)
    else:
        rows, base = _hub_rows(hub_id, split, limit), Path(".")
    return _convert(
        rows, lambda r, i: sat_sample(r, i, split=split, seed=seed, base_dir=base), f"sat-{split}"
    )


def load_pixmo_count(
    *,
    data_dir: str | Path | None = None,
    hub_id: str = PIXMO_COUNT_HUB_ID,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    download_images: bool = False,
    cache_dir: str | Path | None = None,
) -> list[Sample]:
    """Pixmo-Count samples from a local copy (`data/<split>-*.parquet` and `images/`) or the hub."""
    root = Path(data_dir).expanduser() if data_dir is not None else None
    if root is not None:
        rows, base = _local_rows(root, (f"data/{split}-*", f"{split}-*", f"**/{split}-*"), limit)
    else:
        rows, base = _hub_rows(hub_id, split, limit), Path(".")
    image_dir = (root if root.is_dir() else root.parent) / "images" if root is not None else None
    cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "vlmstress" / "pixmo-count"
    find = PixmoImages(image_dir, cache, download_images)

    def make(row: Row, i: int) -> Sample:
        return pixmo_count_sample(row, i, split=split, seed=seed, image=find(row, base))

    return _convert(rows, make, f"pixmo-count-{split}")


SourceFn = Callable[..., list[Sample]]
# The sources a GRPO config's `data: [{source: NAME, ...}]` names; users add theirs with register_source.
SOURCES: Registry[SourceFn] = Registry("training source")


def register_source(name: str) -> Callable[[SourceFn], SourceFn]:
    """A decorator: `load(*, seed, **fields) -> list[Sample]` becomes the training source `name`.
    It is called with the data seed and the fields its config entry sets (n, split, data_dir,
    hub_id, download_images, families; those left at their defaults are not passed), so its
    signature says which it takes: a field it does not take is refused when the config is
    validated. A name already taken is a ValueError."""
    return SOURCES.register(name)


@register_source("synth")
def _synth(
    *,
    seed: int,
    n: int | None = None,
    split: str = DEFAULT_SPLIT["synth"],
    families: Sequence[str] | None = None,
) -> list[Sample]:
    from vlmstress.data import synth

    if split not in synth.SPLIT_SALT:
        raise UsageError(f"synth split must be one of {', '.join(synth.SPLIT_SALT)}, got {split!r}")
    try:
        return synth.generate(n or 2000, seed=seed, split=split, families=families)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@register_source("sat")
def _sat(
    *,
    seed: int,
    n: int | None = None,
    split: str = DEFAULT_SPLIT["sat"],
    data_dir: str | None = None,
    hub_id: str = SAT_HUB_ID,
) -> list[Sample]:
    return load_sat(data_dir=data_dir, hub_id=hub_id, split=split, limit=n, seed=seed)


@register_source("pixmo-count")
def _pixmo_count(
    *,
    seed: int,
    n: int | None = None,
    split: str = DEFAULT_SPLIT["pixmo-count"],
    data_dir: str | None = None,
    hub_id: str = PIXMO_COUNT_HUB_ID,
    download_images: bool = False,
) -> list[Sample]:
    return load_pixmo_count(
        data_dir=data_dir, hub_id=hub_id, split=split, limit=n, seed=seed, download_images=download_images
    )


def source_error(source: str, fields: dict[str, Any]) -> str | None:
    """Why the registered `source` cannot take `fields` (or None): checked before anything loads."""
    why = call_error(SOURCES.lookup(source), seed=0, **fields)
    return f"training source {source!r}: {why}" if why else None


def load_source(source: str, *, seed: int = 0, **fields: Any) -> list[Sample]:
    """Samples of one training source (error samples included: the caller decides what to do);
    `fields` are its config entry's (n, split, families, ...), None ones left out."""
    fields = {k: v for k, v in fields.items() if v is not None}
    why = source_error(source, fields)
    if why:
        raise UsageError(why)
    samples = SOURCES[source](seed=seed, **fields)
    if not isinstance(samples, list) or not all(isinstance(s, Sample) for s in samples):
        raise TypeError(
            f"training source {source!r} returned {type(samples).__name__}, not a list of Samples"
        )
    return samples


def load_training_samples(
    sources: Iterable[Any], seed: int, *, log: Callable[[str], None] = print
) -> list[Sample]:
    """All usable samples of the configured sources (DataSource configs), in order; rows that could
    not be read are dropped and counted, since a training prompt without its image teaches nothing."""
    samples: list[Sample] = []
    for src in sources:
        got = load_source(src.source, seed=seed, **src.fields())
        bad = [s for s in got if s.error]
        if bad:
            log(f"{src.source}: skipped {len(bad)} of {len(got)} rows (first: {bad[0].error})")
        samples += [s for s in got if not s.error]
    if not samples:
        raise UsageError("no usable training samples in the configured data")
    return samples

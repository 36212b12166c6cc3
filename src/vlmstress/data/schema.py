"""The schema: the types that flow from stage to stage, in one module that imports nothing of vlmstress.

Sample (what every data source produces) -> Prompt (what perturb.py asks) -> Record (one line of
records.jsonl, what runner.py writes and metrics, the report and the API read), with the JSON shapes
of a record's parts: Verdict (a judge's), Extraction (the answer extractor's) and RenderedPrompt
(the text the model was asked). Sample and Prompt keep their images; a Record never does: it
references them through its sample_id and the number of images its prompt showed.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

LETTERS = string.ascii_uppercase


def letters(n: int) -> list[str]:
    """Option letters A, B, C, ... for n options (at most 26)."""
    if not 0 <= n <= len(LETTERS):
        raise ValueError(f"{n} options: at most {len(LETTERS)} can be lettered")
    return list(LETTERS[:n])


# An image as a source gives it: PIL image, raw bytes, or a path. Decoding is deferred to
# vlmstress.data.images.load_image so a broken image becomes one error record, not a crashed load.
ImageRef = Any


def all_images(image: ImageRef, extra_images: tuple[ImageRef, ...]) -> tuple[ImageRef, ...]:
    """(first, *rest), or () without a first image: what Sample.images and Prompt.images return."""
    if image is None:
        return ()
    return (image, *extra_images) if extra_images else (image,)


def image_fields(images: tuple[ImageRef, ...] | list[ImageRef]) -> dict[str, Any]:
    """The `image` / `extra_images` keywords of a Sample holding `images` in order."""
    return {"image": images[0] if images else None, "extra_images": tuple(images[1:])}


class _Asked:
    """What a Sample and the Prompt made from it both answer: their images and option letters."""

    image: ImageRef
    extra_images: tuple[ImageRef, ...]
    options: tuple[str, ...]

    @property
    def images(self) -> tuple[ImageRef, ...]:
        """Every image, in the order the question names them; empty for a text-only one."""
        return all_images(self.image, self.extra_images)

    @property
    def option_letters(self) -> list[str]:
        return letters(len(self.options))


@dataclass(frozen=True)
class Sample(_Asked):
    """One question about one image, or about several (BLINK, MuirBench, MMIU).

    `image` is the first image and `extra_images` the ones after it, in the order the question
    names them ("the first image", "the second image"); `images` is all of them. Keeping the first
    apart leaves every one-image caller, and the one-image path, exactly as it was.

    `options` is empty for an open-ended item (then `target` is None and `answer_text` is graded by
    text match). `facts` holds the scene facts of a synthetic sample, from which correct and wrong
    reasoning or captions are written for any option. `error` marks a sample that could not be read
    properly: the runner turns it into error records and goes on.
    """

    sample_id: str
    question: str
    options: tuple[str, ...] = ()
    target: str | None = None
    answer_text: str | None = None
    image: ImageRef = None
    family: str | None = None
    facts: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    extra_images: tuple[ImageRef, ...] = ()

    def __post_init__(self) -> None:
        if self.extra_images and self.image is None:
            raise ValueError("extra_images without a first image: pass it as `image`")

    @property
    def is_open_ended(self) -> bool:
        return not self.options

    def option_text(self, letter: str) -> str:
        return self.options[LETTERS.index(letter)]


@dataclass(frozen=True)
class Prompt(_Asked):
    """What is asked: the user turn, the image(s), and the assistant prefill the model continues.

    As in Sample, `image` is the first image and `extra_images` the rest (a multi-image sample).
    """

    sample_id: str
    variant: str
    user: str
    image: ImageRef
    options: tuple[str, ...]
    target: str | None
    misleading: str | None = None
    prefill: str = ""
    system: str | None = None
    extra_images: tuple[ImageRef, ...] = ()


VerdictName = Literal["consistent", "inconsistent", "unknown", "error"]


@dataclass(frozen=True)
class Verdict:
    """`supports` is the option letter the think argues for (None when it argues for none or the
    judge cannot tell); `by` names the judge. A judge that fails says `error`, never `consistent`."""

    verdict: VerdictName
    supports: str | None
    by: str

    def to_json(self) -> dict:
        return {"verdict": self.verdict, "supports": self.supports, "by": self.by}


@dataclass(frozen=True)
class Extraction:
    """`answer` is the option letter the extractor read, None for "none" or a failure; `error` says
    why it failed (null when it did not); `by` names the extractor."""

    answer: str | None
    by: str
    error: str | None = None

    def to_json(self) -> dict:
        return {"answer": self.answer, "by": self.by, "error": self.error}


@dataclass(frozen=True)
class RenderedPrompt:
    """The text of a Prompt as the model was asked it: the system turn (None for none), the user
    turn, the options as presented (abstain's included) and how many images came before the user
    text. The prefill is the record's own field; the images stay with the sample."""

    system: str | None
    user: str
    options: tuple[str, ...]
    images: int

    @classmethod
    def of(cls, prompt: Prompt) -> RenderedPrompt:
        return cls(prompt.system or None, prompt.user, tuple(prompt.options), len(prompt.images))

    def to_json(self) -> dict:
        return {
            "system": self.system,
            "user": self.user,
            "options": list(self.options),
            "images": self.images,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RenderedPrompt:
        return cls(
            data.get("system"), data["user"], tuple(data.get("options") or ()), int(data.get("images") or 0)
        )


@dataclass(frozen=True, eq=False)
class Record(Mapping):
    """One line of records.jsonl: a (sample, variant), what the model answered and how it was read.

    The fields are design.md's ("Outputs of eval --out DIR"), in records.jsonl's order. It is also
    a read-only Mapping of its JSON object (`record["judge"]["verdict"]`, `record.get("extraction")`,
    `pd.DataFrame(records)`, and `==` against the dict `json.loads` gives), so code written for the
    dicts of records.jsonl reads a Record unchanged. `extraction`, `judges` and `meta` are in the
    JSON only where they are not None; `prompt` always (null where nothing was asked: a broken
    sample, a variant that does not apply).

    A Record is a frozen dataclass, not a pydantic model: its JSON must be byte for byte the dict
    `json.dumps` has always written (pydantic's serializer spaces and formats floats its own way),
    and the runner makes one per answer, where validation would only re-check what it just built.
    `from_json` reads the records of older logs: a field a record predates is None here and absent
    from its Mapping (so `"parse_mode" in record` says whether it was recorded, as the metrics ask).
    """

    sample_id: str
    variant: str
    target: str | None
    misleading: str | None
    response: str | None
    prefill: str | None
    think: str | None
    answer: str | None
    parsed: bool
    correct: bool
    letter_probs: dict[str, float] | None
    entropy: float | None
    p_correct: float | None
    score_source: str | None  # "generation" | "forced" | None
    judge: Verdict | None
    error: str | None
    family: str | None
    difficulty: str | None
    n_tokens: int
    prefill_mode: str | None  # "assistant" | "user" | None
    think_source: str | None  # "content" | "prefill" | "reasoning_content" | "reasoning" | None
    parse_mode: str | None  # "strict" | "lenient" | "extract" | None (unparsed)
    extraction: Extraction | None = None  # only where the extractor was asked
    judges: tuple[Verdict, ...] | None = None  # every judge's verdict, with more than one judge
    meta: dict[str, Any] | None = None  # what else a backend said about how it answered
    prompt: RenderedPrompt | None = None  # what was asked (None: nothing was)

    # The fields a record read by from_json lacked (it predates them): not in its Mapping or JSON.
    _absent: ClassVar[frozenset[str]] = frozenset()

    def asked(self) -> Prompt | None:
        """The Prompt this record answered, its images left with the sample (image None); None
        where nothing was asked, or the record predates `prompt`."""
        if self.prompt is None:
            return None
        return Prompt(
            sample_id=self.sample_id,
            variant=self.variant,
            user=self.prompt.user,
            image=None,
            options=self.prompt.options,
            target=self.target,
            misleading=self.misleading,
            prefill=self.prefill or "",
            system=self.prompt.system,
        )

    def to_json(self) -> dict[str, Any]:
        """The records.jsonl object: json.dumps of it is the record's line."""
        return {key: self[key] for key in self}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        """The Record of a records.jsonl object, of this version or an older one (fields it predates
        are None); a key this version does not know is a ValueError (a newer vlmstress wrote it)."""
        unknown = [k for k in data if k not in _FIELD_SET]
        if unknown:
            raise ValueError(f"record field(s) {', '.join(map(repr, unknown))} unknown to this vlmstress")
        judge, extraction = data.get("judge"), data.get("extraction")
        judges, prompt = data.get("judges"), data.get("prompt")
        plain = {k: data.get(k) for k in _PLAIN}
        plain["parsed"], plain["correct"] = bool(plain["parsed"]), bool(plain["correct"])
        plain["n_tokens"] = plain["n_tokens"] or 0
        record = cls(
            **plain,
            judge=Verdict(**judge) if judge is not None else None,
            extraction=Extraction(**extraction) if extraction is not None else None,
            judges=tuple(Verdict(**v) for v in judges) if judges is not None else None,
            meta=data.get("meta"),
            prompt=RenderedPrompt.from_json(prompt) if prompt is not None else None,
        )
        absent = frozenset(_ALWAYS) - data.keys()
        if absent:
            object.__setattr__(record, "_absent", absent)
        return record

    # -- the Mapping of the JSON object --------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        if key in _PLAIN_SET and key not in self._absent:
            return getattr(self, key)
        if key in _JSON_PARTS:
            value = getattr(self, key)
            if value is None:
                if key in _OPTIONAL or key in self._absent:
                    raise KeyError(key)
                return None
            if key == "judges":
                return [v.to_json() for v in value]
            return value if key == "meta" else value.to_json()
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        for key in _FIELDS:
            if key in self._absent or (key in _OPTIONAL and getattr(self, key) is None):
                continue
            yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)


# records.jsonl's keys in order; `prompt` is the last (added after the others, so a record's line
# is the line of a run before it with `"prompt": ...` added at its end).
_FIELDS = tuple(f.name for f in fields(Record))
_FIELD_SET = frozenset(_FIELDS)
_OPTIONAL = frozenset(("extraction", "judges", "meta"))
_ALWAYS = tuple(k for k in _FIELDS if k not in _OPTIONAL)
# The fields held as a type with a JSON form of its own (and `meta`, held as its JSON but present
# only where not None); the others are held as their JSON values.
_JSON_PARTS = frozenset(("judge", "extraction", "judges", "meta", "prompt"))
_PLAIN = tuple(k for k in _FIELDS if k not in _JSON_PARTS)
_PLAIN_SET = frozenset(_PLAIN)

"""files.load_file: every table format, every way a row can carry its parts, every way a row can be bad."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import datasets
import pandas as pd
import pytest
from PIL import Image

from vlmstress.data.files import RowError, answer_letter, load_file
from vlmstress.data.images import load_image
from vlmstress.data.schema import Sample
from vlmstress.errors import UsageError


def png(color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def write_jsonl(path: Path, rows: list[dict | str | bytes]) -> Path:
    lines = [
        r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode() for r in rows
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def by_id(samples: list[Sample]) -> dict[str, Sample]:
    return {s.sample_id: s for s in samples}


# ---------------------------------------------------------------------------------------------------
# Good rows in every format


def test_jsonl_rows_with_every_answer_form_and_relative_images(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png())
    path = write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {
                "id": 7,
                "question": "Which?",
                "options": ["cat", "dog"],
                "answer": "B",
                "image": "imgs/a.png",
                "category": "animals",
                "difficulty": "easy",
            },
            {"question": "Which?", "options": ["cat", "dog"], "answer": "(A)"},
            {"question": "Which?", "choices": ["cat", "dog", "cow"], "answer": "cow"},
            {"prompt": "Which?", "options": ["cat", "dog"], "label": 1, "family": "fam"},
            {"text": "Which?", "options": [3, 4], "answer": "4"},
        ],
    )
    samples = load_file(path)
    assert [s.sample_id for s in samples] == ["7", "1", "2", "3", "4"]  # id as text, else the row number
    assert all(s.error is None for s in samples), [s.error for s in samples]
    assert [s.target for s in samples] == ["B", "A", "C", "B", "B"]
    first = samples[0]
    assert first.options == ("cat", "dog")
    assert first.family == "animals"
    assert first.meta == {"difficulty": "easy"}
    assert Path(first.image) == tmp_path / "imgs" / "a.png"  # resolved against the file's folder
    assert load_image(first.image).size == (8, 8)
    assert samples[3].family == "fam"
    assert samples[4].options == ("3", "4")


def test_csv_with_letter_columns_keeps_literal_none_and_drops_trailing_empties(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("id,question,A,B,C,D,answer\n007,Pick one,None,NA,,,B\n8,Pick again,x,y,z,nan,z\n")
    samples = load_file(path)
    assert [s.sample_id for s in samples] == ["007", "8"]
    assert samples[0].options == ("None", "NA")  # pandas' default NA list would have eaten these
    assert samples[0].target == "B"
    assert samples[1].options == ("x", "y", "z")
    assert samples[1].target == "C"


def test_csv_list_column_written_by_a_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    pd.DataFrame(
        {"id": ["", "k"], "index": [5, 6], "question": ["Q?", "R?"], "options": [["a", "b"], '["c", "d"]'],
         "answer": [0, "d"]}
    ).to_csv(path, index=False)  # fmt: skip
    samples = load_file(path)
    assert [(s.sample_id, s.options, s.target) for s in samples] == [
        ("5", ("a", "b"), "A"),
        ("k", ("c", "d"), "B"),
    ]


def test_mmbench_style_tsv_with_base64_hint_and_shared_images(tmp_path: Path) -> None:
    red, blue = (base64.b64encode(png(c)).decode() for c in [(255, 0, 0), (0, 0, 255)])
    frame = pd.DataFrame(
        {
            "index": [1, 2, 1000001],
            "question": ["What colour?", "And this?", "What colour?"],
            "hint": ["Look closely.", None, "Look closely."],
            "A": ["red", "blue", "green"],
            "B": ["green", "red", "red"],
            "C": [None, "green", None],
            "answer": ["A", "A", "B"],
            "image": [red, blue, "1"],  # VLMEvalKit stores a repeated image as the index of its first row
            "category": ["colour"] * 3,
        }
    )
    path = tmp_path / "MMBench_DEV_EN.tsv"
    frame.to_csv(path, sep="\t", index=False)
    samples = by_id(load_file(path))
    assert set(samples) == {"1", "2", "1000001"}
    assert samples["1"].question == "Look closely.\nWhat colour?"
    assert samples["2"].question == "And this?"
    assert samples["1"].options == ("red", "green")
    assert samples["2"].options == ("blue", "red", "green")
    assert load_image(samples["1000001"].image).getpixel((0, 0)) == (255, 0, 0)
    assert load_image(samples["2"].image).getpixel((0, 0)) == (0, 0, 255)
    assert samples["1000001"].meta["index"] == 1000001


def test_parquet_with_datasets_image_column_and_list_options(tmp_path: Path) -> None:
    features = datasets.Features(
        {
            "question": datasets.Value("string"),
            "choices": datasets.List(datasets.Value("string")),
            "answer": datasets.Value("int64"),
            "image": datasets.Image(),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "question": ["Q?"],
            "choices": [["a", "b", "c"]],
            "answer": [2],
            "image": [{"bytes": png(), "path": None}],
        },
        features=features,
    )
    path = tmp_path / "qa.parquet"
    ds.to_parquet(str(path))
    (sample,) = load_file(path)
    assert sample.error is None
    assert sample.options == ("a", "b", "c")
    assert sample.target == "C"
    assert load_image(sample.image).getpixel((0, 0)) == (10, 200, 30)


def test_json_list_and_wrapped_list(tmp_path: Path) -> None:
    rows = [{"question": "Q?", "options": ["a", "b"], "answer": "a"}]
    (tmp_path / "plain.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows, "version": 2}))
    for name in ("plain.json", "wrapped.json"):
        (sample,) = load_file(tmp_path / name)
        assert (sample.sample_id, sample.target) == ("0", "A")


def test_rows_without_option_columns_are_open_ended(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "open.jsonl", [{"question": "Colour?", "answer": "pink"}, {"question": "N?", "answer": 3}]
    )
    samples = load_file(path)
    assert [(s.options, s.target, s.answer_text, s.error) for s in samples] == [
        ((), None, "pink", None),
        ((), None, "3", None),
    ]
    assert samples[0].is_open_ended


def test_limit_keeps_the_first_rows(tmp_path: Path) -> None:
    rows = [{"id": i, "question": "Q?", "options": ["a", "b"], "answer": "A"} for i in range(10)]
    assert [s.sample_id for s in load_file(write_jsonl(tmp_path / "q.jsonl", rows), limit=3)] == [
        "0",
        "1",
        "2",
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "q.parquet")
    assert len(load_file(tmp_path / "q.parquet", limit=4)) == 4


# ---------------------------------------------------------------------------------------------------
# Bad rows: each one an error sample, the rest of the file unharmed


def test_every_kind_of_broken_row_becomes_an_error_sample(tmp_path: Path) -> None:
    ok = {"question": "Q?", "options": ["a", "b"], "answer": "A"}
    rows: list[dict | str | bytes] = [
        {"id": "ok", **ok},
        {"id": "no-options", "question": "Q?", "options": [], "answer": "A"},
        {"id": "null-options", "question": "Q?", "options": None, "answer": "A"},
        {"id": "too-many", "question": "Q?", "options": [f"o{i}" for i in range(27)], "answer": "A"},
        {"id": "not-among", "question": "Q?", "options": ["a", "b"], "answer": "C"},
        {"id": "not-among-text", "question": "Q?", "options": ["a", "b"], "answer": "zebra"},
        {"id": "index-range", "question": "Q?", "options": ["a", "b"], "answer": 5},
        {"id": "empty-q", "question": "   ", "options": ["a", "b"], "answer": "A"},
        {"id": "q-type", "question": 42, "options": ["a", "b"], "answer": "A"},
        {"id": "opt-type", "question": "Q?", "options": 5, "answer": "A"},
        {"id": "opt-item-type", "question": "Q?", "options": ["a", {"x": 1}], "answer": "A"},
        {"id": "answer-type", "question": "Q?", "options": ["a", "b"], "answer": ["A"]},
        {"id": "no-answer", "question": "Q?", "options": ["a", "b"]},
        {"id": "image-type", "question": "Q?", "options": ["a", "b"], "answer": "A", "image": 3.5},
        b'{"id": "bad-utf8", "question": "caf\xe9?", "options": ["a", "b"], "answer": "A"}',
        '{"id": "broken json", "question": ',
        "[1, 2, 3]",
        {"id": "ok2", **ok},
    ]
    samples = by_id(load_file(write_jsonl(tmp_path / "bad.jsonl", rows)))
    expect = {
        "no-options": "no options",
        "null-options": "no options",
        "too-many": "27 options",
        "not-among": "not among",
        "not-among-text": "not among",
        "index-range": "out of range",
        "empty-q": "empty question",
        "q-type": "must be text, got int",
        "opt-type": "must be a list",
        "opt-item-type": "must be text, got dict",
        "answer-type": "got list",
        "no-answer": "no answer",
        "image-type": "got float",
        "bad-utf8": "non-UTF-8",
        "15": "invalid JSON",
        "16": "not an object",
    }
    for sid, message in expect.items():
        assert samples[sid].error is not None and message in samples[sid].error, (sid, samples[sid].error)
        assert "\n" not in samples[sid].error
    assert samples["ok"].error is None and samples["ok2"].error is None
    # as much as is known is kept
    assert samples["not-among"].options == ("a", "b")
    assert samples["bad-utf8"].question == "caf\ufffd?"
    assert len(samples) == len(rows)


def test_non_utf8_cell_in_a_tsv_marks_only_its_row(tmp_path: Path) -> None:
    path = tmp_path / "q.tsv"
    path.write_bytes(
        b"index\tquestion\tA\tB\tanswer\n1\tgood?\tx\ty\tA\n2\tna\xefve?\tx\ty\tA\n3\tfine\tx\tc\xe9\tB\n"
    )
    samples = by_id(load_file(path))
    assert samples["1"].error is None
    assert "non-UTF-8 text in column 'question'" in samples["2"].error
    assert "non-UTF-8 text in column 'B'" in samples["3"].error


def test_letter_columns_with_a_gap_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text("question,A,B,C,answer\nQ?,x,,z,A\n")
    (sample,) = load_file(path)
    assert "option B is empty" in sample.error


def test_duplicate_ids_keep_the_first_and_never_collide(tmp_path: Path) -> None:
    row = {"question": "Q?", "options": ["a", "b"], "answer": "A"}
    rows = [{"id": 7, **row}, {"id": "7", **row, "answer": "B"}, {"id": "7#dup1", **row}, {"id": 7, **row}]
    samples = load_file(write_jsonl(tmp_path / "d.jsonl", rows))
    ids = [s.sample_id for s in samples]
    assert len(set(ids)) == len(ids) == 4
    assert samples[0].sample_id == "7" and samples[0].error is None
    assert samples[2].sample_id == "7#dup1" and samples[2].error is None  # a real id is not stolen
    assert samples[1].sample_id == "7#dup2" and "duplicate sample id" in samples[1].error
    assert samples[1].target == "B"  # what was read is kept
    assert samples[3].sample_id == "7#dup3"


# ---------------------------------------------------------------------------------------------------
# Files that cannot be read at all


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, "not found"),
        ("q.xlsx", b"whatever", "unsupported data file type"),
        ("q.json", b"{not json", "cannot read"),
        ("q.json", b"42", "not a table"),
        ("q.json", b'{"a": [1], "b": [2]}', "not a table"),
        ("q.parquet", b"PAR1 but not really", "cannot read"),
        ("q.csv", b"", "cannot read"),
        ("q.jsonl", b"\n\n", "no rows"),
        ("q.csv", b"foo,bar\n1,2\n", "no question column"),
    ],
)
def test_unreadable_files_raise_usage_error(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=message) as info:
        load_file(path)
    assert "\n" not in str(info.value)


def test_a_directory_is_not_a_data_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="directory"):
        load_file(tmp_path)


# ---------------------------------------------------------------------------------------------------
# Answers


@pytest.mark.parametrize(
    ("answer", "letter", "warned"),
    [
        ("B", "B", False),
        ("(B)", "B", False),
        (" B. ", "B", False),
        ("right", "B", False),
        ("RIGHT", "B", False),
        ("B. right", "B", False),
        ("B. left", "B", True),  # letter and text disagree: the letter wins, with a warning
        (1, "B", False),
        (1.0, "B", False),
        ("1", "B", False),
    ],
)
def test_answer_letter_forms(answer: object, letter: str, warned: bool) -> None:
    got, warning = answer_letter(answer, ("left", "right", "up"))
    assert got == letter
    assert (warning is not None) == warned


@pytest.mark.parametrize("answer", ["D", "(Z)", 3, -1, 1.5, True, "", None, "sideways"])
def test_answer_letter_rejects(answer: object) -> None:
    with pytest.raises(RowError):
        answer_letter(answer, ("left", "right", "up"))


def test_option_text_wins_over_index_for_digit_answers() -> None:
    assert answer_letter("2", ("1", "2", "3")) == ("B", None)
    assert answer_letter("x", ("x", "X", "y")) == ("A", None)  # exact case first
    with pytest.raises(RowError, match="several"):
        answer_letter("left", ("Left", "LEFT", "y"))


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def test_deep_nesting_is_one_error_row_not_a_crash_or_a_refused_file(tmp_path: Path) -> None:
    """Issue #19: a 600-deep extra column ended the run with RecursionError, and one 100k-deep JSON
    line made the whole file refused. Each is now its own row's error; the other rows load."""
    good = {"id": "ok", "question": "Which?", "options": ["x", "y"], "answer": "A"}
    deep_column = {**good, "id": "deep-column", "extra": _nested(600)}
    path = tmp_path / "data.jsonl"
    path.write_text(
        json.dumps(good)
        + "\n"
        + json.dumps(deep_column)
        + "\n"
        + '{"id": "deep-line", "q": '
        + "[" * 100_000
        + "\n"
    )
    by_id = {s.sample_id: s for s in load_file(path)}
    assert by_id["ok"].error is None
    assert "nested" in by_id["deep-column"].error
    (line_error,) = [s.error for sid, s in by_id.items() if sid not in ("ok", "deep-column")]
    assert "nested" in line_error
    json_path = tmp_path / "data.json"
    json_path.write_text("[" + json.dumps(good) + "," + json.dumps(deep_column) + "]")
    assert [s.error is None for s in load_file(json_path)] == [True, False]


def test_a_huge_file_that_is_not_an_image_is_refused_without_reading_it(tmp_path: Path) -> None:
    import tracemalloc

    fake = tmp_path / "huge.png"
    with fake.open("wb") as f:
        f.truncate(2 * 1024**3)  # 2 GiB, sparse: no disk used, but read_bytes would allocate it all
    path = tmp_path / "data.jsonl"
    path.write_text(
        json.dumps(
            {"id": "a", "question": "Which?", "options": ["x", "y"], "answer": "A", "image": "huge.png"}
        )
    )
    (sample,) = load_file(path)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="huge.png"):
            load_image(sample.image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 1024**2
    # under the size cap, the header alone tells it is not an image
    with fake.open("r+b") as f:
        f.truncate(400 * 1024**2)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="not a recognised image"):
            load_image(sample.image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 1024**2


def test_multi_image_rows_keep_every_image_in_order(tmp_path: Path) -> None:
    """A list column (images, as a JSON list in a CSV too), BLINK's numbered columns, or a list in
    the image column: each item as the image column takes it; one unusable item fails the row."""
    (tmp_path / "first.png").write_bytes(png((255, 0, 0)))
    blue, green = base64.b64encode(png((0, 0, 255))).decode(), png((0, 255, 0))
    row = {"question": "Which image is red?", "options": ["first", "second"], "answer": "A"}
    path = write_jsonl(
        tmp_path / "multi.jsonl",
        [
            {"id": "list", **row, "images": ["first.png", blue]},
            {"id": "numbered", **row, "image_1": "first.png", "image_2": blue, "image_3": None},
            {"id": "in-image", **row, "image": json.dumps(["first.png", blue])},
            {"id": "one", **row, "images": ["first.png"]},
            {"id": "bad-item", **row, "images": ["first.png", 5]},
            {"id": "empty-item", **row, "images": ["first.png", None]},
            {"id": "not-a-list", **row, "images": {"a": 1}},
        ],
    )
    got = by_id(load_file(path))
    for sid in ("list", "numbered", "in-image"):
        sample = got[sid]
        assert sample.error is None and len(sample.images) == 2 and sample.meta == {}
        assert [load_image(im).getpixel((0, 0)) for im in sample.images] == [(255, 0, 0), (0, 0, 255)]
        assert sample.image == sample.images[0] and sample.extra_images == sample.images[1:]
    assert got["one"].images == (got["one"].image,) and got["one"].extra_images == ()
    assert "images[2]" in got["bad-item"].error and "image 2" in got["empty-item"].error
    assert "list of images" in got["not-a-list"].error
    assert all(got[s].images == () and got[s].question for s in ("bad-item", "empty-item", "not-a-list"))
    # a parquet list of bytes and a CSV's JSON list text read the same
    frame = pd.DataFrame([{"id": "pq", **row, "images": [png((255, 0, 0)), green]}])
    frame.to_parquet(tmp_path / "multi.parquet")
    frame.assign(images=[json.dumps(["first.png", blue])]).to_csv(tmp_path / "multi.csv", index=False)
    [pq] = load_file(tmp_path / "multi.parquet")
    [csv] = load_file(tmp_path / "multi.csv")
    assert [load_image(im).getpixel((0, 0)) for im in pq.images] == [(255, 0, 0), (0, 255, 0)]
    assert [load_image(im).getpixel((0, 0)) for im in csv.images] == [(255, 0, 0), (0, 0, 255)]

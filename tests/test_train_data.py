"""Training data loaders on small fixtures written in the hub repositories' shapes."""

from __future__ import annotations

import hashlib
import io
import random

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmstress.data import synth
from vlmstress.data.images import load_image
from vlmstress.errors import UsageError
from vlmstress.train import data as train_data
from vlmstress.train.config import DataSource
from vlmstress.train.data import count_options, load_pixmo_count, load_sat, load_source, load_training_samples


def png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


SAT_ROWS = [
    # array/SAT: image_bytes is a list of images; answers list the correct one first
    {
        "image_bytes": [{"bytes": png("red"), "path": None}],
        "question": "Is the chair left of the table?",
        "answers": ["yes", "no"],
        "correct_answer": "yes",
        "question_type": "obj_rel",
    },
    {
        "image_bytes": [{"bytes": png("red"), "path": None}, {"bytes": png("blue"), "path": None}],
        "question": "Did the camera move left or right?",
        "answers": ["left", "right"],
        "correct_answer": "left",
        "question_type": "ego_movement",
    },
    {
        "image_bytes": [{"bytes": png("green"), "path": None}],
        "question": "Which is closer?",
        "answers": ["the lamp", "the sofa", "the door"],
        "correct_answer": "the lamp",
        "question_type": "depth",
    },
    {
        "image_bytes": [],
        "question": "broken row",
        "answers": ["a", "b"],
        "correct_answer": "a",
        "question_type": "obj_rel",
    },
]


@pytest.fixture()
def sat_dir(tmp_path):
    table = pa.Table.from_pylist(SAT_ROWS)
    pq.write_table(table, tmp_path / "SAT_static.parquet")
    pq.write_table(table.slice(0, 1), tmp_path / "SAT_val.parquet")
    return tmp_path


def test_sat_local_copy(sat_dir):
    samples = load_sat(data_dir=sat_dir, split="static", seed=0)
    assert [s.sample_id for s in samples] == [f"sat-static-{i}" for i in range(4)]
    good, bad = samples[:3], samples[3]
    assert bad.error and "image" in bad.error
    for s, row in zip(good, SAT_ROWS, strict=False):
        assert sorted(s.options) == sorted(row["answers"])
        assert s.option_text(s.target) == row["correct_answer"]
        assert s.family == row["question_type"]
        assert load_image(s.image).size == (8, 8)
    assert [load_image(im).getpixel((0, 0)) for im in good[1].meta["images"]] == [(255, 0, 0), (0, 0, 255)]
    # options are shuffled from (seed, id), the same on every load
    assert [s.options for s in load_sat(data_dir=sat_dir, seed=0)] == [s.options for s in samples]
    targets = {s.target for seed in range(20) for s in load_sat(data_dir=sat_dir, seed=seed)[:3]}
    assert len(targets) > 1  # not always the first option, as SAT lists it
    assert len(load_sat(data_dir=sat_dir, split="val")) == 1
    assert len(load_sat(data_dir=sat_dir / "SAT_static.parquet", limit=2)) == 2
    with pytest.raises(UsageError):
        load_sat(data_dir=sat_dir, split="train")


def test_sat_from_the_hub_is_streamed_and_kept_encoded(monkeypatch):
    features = datasets.Features(
        {
            "image_bytes": datasets.List(datasets.Image()),
            "question": datasets.Value("string"),
            "answers": datasets.List(datasets.Value("string")),
            "correct_answer": datasets.Value("string"),
            "question_type": datasets.Value("string"),
        }
    )
    hub = datasets.Dataset.from_list(SAT_ROWS[:3], features=features)
    calls = []

    def fake_load_dataset(repo, split=None, streaming=False):
        calls.append((repo, split, streaming))
        return hub.to_iterable_dataset() if streaming else hub

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    samples = load_sat(split="static", limit=2)
    assert calls == [("array/SAT", "static", True)]
    assert len(samples) == 2 and not any(s.error for s in samples)
    assert isinstance(samples[0].image, dict) and samples[0].image["bytes"]  # undecoded
    assert len(load_sat(split="static")) == 3 and calls[-1][2] is False


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def pixmo_dir(tmp_path):
    images = [png("red"), png("green"), png("blue")]
    (tmp_path / "images").mkdir()
    for im in images[:2]:
        (tmp_path / "images" / f"{sha(im)}.png").write_bytes(im)
    rows = [
        {
            "image_url": f"https://example.invalid/{i}.jpg",
            "image_sha256": sha(im),
            "count": count,
            "points": [{"x": 1.0, "y": 2.0}] * count,
            "label": label,
        }
        for i, (im, count, label) in enumerate(zip(images, [3, 0, 5], ["boats", "dogs", "cars"], strict=True))
    ]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "train-00000-of-00001.parquet")
    return tmp_path


def test_pixmo_count_local_copy(pixmo_dir):
    samples = load_pixmo_count(data_dir=pixmo_dir, seed=0)
    assert len(samples) == 3
    boats, dogs, cars = samples
    assert boats.question == "How many boats are there in the image?"
    assert boats.option_text(boats.target) == "3" and boats.answer_text == "3"
    assert dogs.option_text(dogs.target) == "0"
    assert load_image(boats.image).getpixel((0, 0)) == (255, 0, 0)
    assert cars.error and "not found locally" in cars.error  # its image is neither local nor fetched


def test_pixmo_count_image_column(tmp_path):
    rows = [
        {
            "image_url": "u",
            "image_sha256": "x",
            "count": 2,
            "label": "cups",
            "image": {"bytes": png("red"), "path": None},
        }
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000-of-00001.parquet")
    (s,) = load_pixmo_count(data_dir=tmp_path)
    assert not s.error and load_image(s.image).size == (8, 8)


@pytest.mark.parametrize("count", range(0, 12))
def test_count_options(count):
    opts = count_options(count, random.Random(count))
    values = [int(o) for o in opts]
    assert len(set(values)) == 4 and count in values and values == sorted(values) and min(values) >= 0
    assert max(abs(v - count) for v in values) <= 4


def test_training_samples_drop_unreadable_rows(sat_dir, pixmo_dir):
    logged = []
    sources = [
        DataSource(source="sat", data_dir=str(sat_dir)),
        DataSource(source="pixmo-count", data_dir=str(pixmo_dir), n=2),
        DataSource(source="synth", n=5),
    ]
    samples = load_training_samples(sources, seed=0, log=logged.append)
    assert len(samples) == 3 + 2 + 5 and not any(s.error for s in samples)
    assert [s.sample_id.split("-")[0] for s in samples] == ["sat"] * 3 + ["pixmo"] * 2 + ["synth"] * 5
    assert len(logged) == 1 and logged[0].startswith("sat: skipped 1 of 4")
    assert all(s.sample_id.startswith("synth-train-") for s in samples[5:])
    with pytest.raises(UsageError):
        load_training_samples([DataSource(source="pixmo-count", data_dir=str(pixmo_dir / "images"))], seed=0)


def test_synth_source_and_errors():
    assert [s.sample_id for s in load_source("synth", n=3, seed=2)] == [
        f"synth-train-2-{i}" for i in range(3)
    ]
    assert load_source("synth", n=2, split="val")[0].sample_id == "synth-val-0-0"
    with pytest.raises(UsageError):
        load_source("synth", n=2, split="dev")
    with pytest.raises(UsageError):
        load_source("geometry3k")
    assert train_data.DEFAULT_SPLIT["sat"] == "static"


def test_synth_families_pick_question_families():
    picked = load_source("synth", n=6, families=["count", "twohop"])
    assert [s.family for s in picked] == ["count", "twohop"] * 3
    assert len({s.sample_id for s in picked}) == 6
    # the default stream is unchanged by the option's existence
    assert [s.family for s in load_source("synth", n=5)] == list(synth.FAMILIES)
    with pytest.raises(UsageError, match="synth families"):
        load_source("synth", n=2, families=["geometry"])
    with pytest.raises(
        ValueError, match="training source .sat.: got an unexpected keyword argument .families."
    ):
        DataSource(source="sat", families=["count"])
    with pytest.raises(ValueError, match="unknown synth families"):
        DataSource(source="synth", families=["count", "geometry"])
    src = DataSource(source="synth", n=4, families=["count"])
    assert {s.family for s in load_training_samples([src], seed=0, log=lambda _: None)} == {"count"}

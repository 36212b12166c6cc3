"""Benchmark loaders on small fixtures in each real shape (local copies and a faked hub), the official
aggregates, and load_data's SPEC dispatch. No test touches the network."""

from __future__ import annotations

import base64
import io
import json
import sys
import types
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest
from PIL import Image

import vlmstress.data
from vlmstress.data import benchmarks
from vlmstress.data.benchmarks import aggregate, load_benchmark, split_inline_options, strip_option_prefixes
from vlmstress.data.images import load_image
from vlmstress.data.loading import load_data
from vlmstress.data.schema import Sample
from vlmstress.errors import UsageError

STR, INT = datasets.Value("string"), datasets.Value("int64")


def png(color: tuple[int, int, int] = (0, 128, 255), size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def img_cell(color: tuple[int, int, int] = (0, 128, 255)) -> dict[str, Any]:
    return {"bytes": png(color), "path": None}


def write_parquet(path: Path, rows: list[dict], features: datasets.Features) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))


def write_image(path: Path, color: tuple[int, int, int] = (250, 0, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(color))


def summary(samples: list[Sample]) -> list[tuple]:
    return [(s.sample_id, s.question, s.options, s.target, s.answer_text, s.family, s.error) for s in samples]


# ---------------------------------------------------------------------------------------------------
# Fixture rows, in the shape each hub repository holds them


CV_FEATURES = datasets.Features(
    {
        "idx": INT,
        "type": STR,
        "task": STR,
        "image": datasets.Image(),
        "question": STR,
        "choices": datasets.List(STR),
        "answer": STR,
        "prompt": STR,
        "filename": STR,
        "source": STR,
        "source_dataset": STR,
        "source_filename": STR,
        "target_class": STR,
        "target_size": INT,
        "bbox": datasets.List(INT),
    }
)


def cv_row(
    idx: int, type_: str, task: str, source: str, question: str, choices: list[str], answer: str
) -> dict:
    lines = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    return {
        "idx": idx,
        "type": type_,
        "task": task,
        "image": img_cell(),
        "question": question,
        "choices": choices,
        "answer": answer,
        "prompt": f"{question} Select from the following choices.\n{lines}",
        "filename": f"img/{type_}/{task.lower()}/{source.lower()}_{idx}.png",
        "source": source,
        "source_dataset": f"{source} Validation Set",
        "source_filename": f"{idx}.jpg",
        "target_class": None,
        "target_size": None,
        "bbox": None,
    }


CV_2D = [
    cv_row(0, "2D", "Count", "ADE20K", "How many organs are in the image?", ["3", "2", "1", "0"], "(C)"),
    cv_row(1, "2D", "Relation", "COCO", "Is the cup left of the plate?", ["left", "right"], "(B)"),
]
CV_3D = [cv_row(0, "3D", "Depth", "Omni3D", "Which is closer to the camera?", ["chair", "table"], "(A)")]

THREEDSR_FEATURES = datasets.Features(
    {
        "index": INT,
        "question": STR,
        "A": STR,
        "B": STR,
        "C": STR,
        "D": STR,
        "answer": STR,
        "category": STR,
        "qid": STR,
        "image": datasets.Image(),
    }
)
THREEDSR = [
    {
        "index": 0,
        "question": "Is the cup higher than the plate?",
        "A": "yes",
        "B": "no",
        "C": None,
        "D": None,
        "answer": "A",
        "category": "height_higher",
        "qid": "VIN6MS3J",
        "image": img_cell(),
    },
    {
        "index": 1,
        "question": "Is the plate higher than the cup?",
        "A": "yes",
        "B": "no",
        "C": "nan",
        "D": "nan",
        "answer": "B",
        "category": "height_higher",
        "qid": "VIN6MS3J-flip",
        "image": img_cell(),
    },
    {
        "index": 2,
        "question": "Which way is the car facing?",
        "A": "left",
        "B": "right",
        "C": "towards",
        "D": "away",
        "answer": "D",
        "category": "orientation_viewpoint",
        "qid": "Q2BX81LM-1",
        "image": img_cell(),
    },
    {
        "index": 3,
        "question": "Is the dog on the left?",
        "A": "yes",
        "B": "no",
        "C": None,
        "D": None,
        "answer": "C",
        "category": "orientation_on_the_left",
        "qid": "KD92MSA1",
        "image": img_cell(),
    },
]

VSTAR = [
    {
        "image": "direct_attributes/sa_4690.jpg",
        "category": "direct_attributes",
        "question_id": 0,
        "label": "B",
        "text": "What is the color of the woman's jacket?\n(A) black\n(B) red\n(C) blue\n(D) orange\n"
        "Answer with the option's letter from the given choices directly.",
    },
    {
        "image": "relative_position/sa_10.jpg",
        "category": "relative_position",
        "question_id": 0,
        "label": "A",
        "text": "Is the dog on the left or right side of the cat?\n(A) left\n(B) right\n"
        "Answer with the option's letter from the given choices directly.",
    },
]

MME_FEATURES = datasets.Features(
    {
        "index": INT,
        "question": STR,
        "multi-choice options": datasets.List(STR),
        "answer": STR,
        "category": STR,
        "l2-category": STR,
        "bytes": STR,
    }
)
MME = [
    {
        "index": 11,
        "question": "What is the colour of the car on the left?",
        "answer": "B",
        "multi-choice options": [
            "(A) red",
            "(B) blue",
            "(C) green",
            "(D) white",
            "(E) The image does not feature the car.",
        ],
        "category": "Perception/Monitoring",
        "l2-category": "color",
        "bytes": base64.b64encode(png()).decode(),
    },
    {
        "index": 12,
        "question": "How many lanes are there?",
        "answer": "(A)",
        "multi-choice options": [
            "(A) 2",
            "(B) 3",
            "(C) 4",
            "(D) 5",
            "(E) The image does not feature the lanes.",
        ],
        "category": "Perception/Autonomous_Driving",
        "l2-category": "count",
        "bytes": "bm90IGFuIGltYWdl",
    },
]

MMB_COLUMNS = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "E",
    "answer",
    "category",
    "image",
    "source",
    "L2-category",
    "split",
]
MMB_FEATURES = datasets.Features(
    {c: (INT if c == "index" else datasets.Image() if c == "image" else STR) for c in MMB_COLUMNS}
)
MMBENCH = [
    {
        "index": 1,
        "question": "What is the main colour?",
        "hint": "The picture shows a wall.",
        "A": "blue",
        "B": "red",
        "C": "green",
        "D": None,
        "E": None,
        "answer": "A",
        "category": "attribute_recognition",
        "image": img_cell(),
        "source": "MMBench",
        "L2-category": "finegrained_perception",
        "split": "dev",
    },
    {
        "index": 1000001,
        "question": "What is the main colour?",
        "hint": "The picture shows a wall.",
        "A": "red",
        "B": "green",
        "C": "blue",
        "D": None,
        "E": None,
        "answer": "C",
        "category": "attribute_recognition",
        "image": img_cell(),
        "source": "MMBench",
        "L2-category": "finegrained_perception",
        "split": "dev",
    },
    {
        "index": 2,
        "question": "What is in the image?",
        "hint": None,
        "A": "a cat",
        "B": "a dog",
        "C": "a cow",
        "D": "a hen",
        "E": "a fox",
        "answer": "E",
        "category": "object_localization",
        "image": img_cell(),
        "source": "MMBench",
        "L2-category": "coarse_perception",
        "split": "dev",
    },
    {
        "index": 3,
        "question": "Broken answer?",
        "hint": None,
        "A": "x",
        "B": "y",
        "C": None,
        "D": None,
        "E": None,
        "answer": "F",
        "category": "object_localization",
        "image": img_cell(),
        "source": "MMBench",
        "L2-category": "coarse_perception",
        "split": "dev",
    },
]

MMSTAR_FEATURES = datasets.Features(
    {
        "index": INT,
        "question": STR,
        "image": datasets.Image(),
        "answer": STR,
        "category": STR,
        "l2_category": STR,
    }
)
MMSTAR = [
    {
        "index": 0,
        "answer": "A",
        "category": "coarse perception",
        "l2_category": "image scene and topic",
        "image": img_cell(),
        "question": "Which option describe the object relationship in the image correctly?\n"
        "Options: A: The suitcase is on the book., B: The suitcase is beneath the cat., "
        "C: The suitcase is beneath the bed., D: The suitcase is beneath the book.",
    },
    {
        "index": 1,
        "answer": "B",
        "category": "math",
        "l2_category": "geometry",
        "image": img_cell(),
        "question": "What is the value of x?\nOptions: A: 3, B: 4, C: 5, D: 6",
    },
    {
        "index": 2,
        "answer": "A",
        "category": "math",
        "l2_category": "geometry",
        "image": img_cell(),
        "question": "A question whose options were lost.",
    },
]


# ---------------------------------------------------------------------------------------------------
# Local copies laid out as the hub repository or the benchmark's own release


def make_cvbench(root: Path) -> Path:
    write_parquet(root / "test_2d.parquet", CV_2D, CV_FEATURES)
    write_parquet(root / "test_3d.parquet", CV_3D, CV_FEATURES)
    return root


def make_vstar(root: Path) -> Path:
    for i, row in enumerate(VSTAR):
        write_image(root / row["image"], (i * 100, 10, 10))
    (root / "test_questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in VSTAR))
    return root


def make_mmbench_tsv(root: Path) -> Path:
    # VLMEvalKit's MMBench_DEV_EN.tsv: base64 images, a repeated image stored as its first row's index.
    rows = []
    for r in MMBENCH:
        b64 = base64.b64encode(r["image"]["bytes"]).decode()
        rows.append({**r, "image": "1" if r["index"] == 1000001 else b64})
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=MMB_COLUMNS).to_csv(root / "MMBench_DEV_EN.tsv", sep="\t", index=False)
    return root


def make_spatialmm(root: Path) -> Path:
    one = [
        {
            "image_name": "75a3568a9a.jpg",
            "question": "In which hand is the man holding the glass?\nA. left\nB. right",
            "answer": "B. right",
            "object1": "man",
            "object2": "glass",
        },
        {
            "image_name": "00f3c6fd0d.jpg",
            "question": "Where is the building?\nA. right\nB. front\nC. behind",
            "answer": "A. behind",
            "object1": "building",
            "object2": "wall",
        },  # letter and text disagree
    ]
    two = [
        {
            "image_name": "dcb7ebfcc2.jpg",
            "question": "Is the glass touching the watch?\nA. yes\nB. no",
            "answer": "B. no",
            "object1": "glass",
            "object2": "watch",
        },
        {"image_name": "missing.jpg", "question": "No options at all?", "answer": "A. yes"},
    ]
    hop = [
        {
            "image_name": "c51cu410c1.jpeg",
            "question": "Which direction is the adult monkey facing?",
            "answer": "left",
            "reasoning": "{[adult monkey has baby on back], [facing left]}",
            "hop": 2,
        },
        {
            "image_name": "a87df479a2.jpeg",
            "question": "What colour is the garment?",
            "answer": "pink",
            "reasoning": "{[person1 is on the left], [garment is pink]}",
            "hop": 3,
        },
    ]
    (root / "data").mkdir(parents=True)
    for name, rows in [
        ("spatial_mm_one_obj", one),
        ("spatial_mm_two_obj", two),
        ("multihop_reasoning_309", hop),
    ]:
        (root / "data" / f"{name}.json").write_text(json.dumps(rows, indent=2))
    for row in one + two[:1] + hop:
        write_image(root / "images" / row["image_name"])
    return root


def make_whatsup(root: Path) -> Path:
    images = [
        {
            "image_path": "data/controlled_images/beer-bottle_on_armchair.jpeg",
            "caption_options": [
                "A beer bottle on a armchair",
                "A beer bottle under a armchair",
                "A beer bottle to the left of a armchair",
                "A beer bottle to the right of a armchair",
            ],
        },
        {
            "image_path": "data/controlled_images/cup_under_table.jpeg",
            "caption_options": [
                "A cup under a table",
                "A cup on a table",
                "A cup to the left of a table",
                "A cup to the right of a table",
            ],
        },
    ]
    clevr = [
        {
            "image_path": "data/controlled_clevr/cube_behind_sphere.jpeg",
            "caption_options": [
                "A cube behind a sphere",
                "A cube in front of a sphere",
                "A cube left of a sphere",
                "A cube right of a sphere",
            ],
        },
    ]
    (root / "data").mkdir(parents=True)
    (root / "data" / "controlled_images_dataset.json").write_text(json.dumps(images))
    (root / "data" / "controlled_clevr_dataset.json").write_text(json.dumps(clevr))
    for row in images + clevr:
        write_image(root / row["image_path"])
    return root


# ---------------------------------------------------------------------------------------------------
# Local loading, benchmark by benchmark


def test_cvbench_from_hub_layout_parquet(tmp_path: Path) -> None:
    samples = load_benchmark("cvbench", data_dir=make_cvbench(tmp_path))
    assert summary(samples) == [
        (
            "2D-0",
            "How many organs are in the image? Select from the following choices.",
            ("3", "2", "1", "0"),
            "C",
            None,
            "Count",
            None,
        ),
        (
            "2D-1",
            "Is the cup left of the plate? Select from the following choices.",
            ("left", "right"),
            "B",
            None,
            "Relation",
            None,
        ),
        (
            "3D-0",
            "Which is closer to the camera? Select from the following choices.",
            ("chair", "table"),
            "A",
            None,
            "Depth",
            None,
        ),
    ]
    assert [s.meta["source"] for s in samples] == ["ADE20K", "COCO", "Omni3D"]
    assert load_image(samples[0].image).size == (8, 6)


def test_threedsr_skips_nan_options_and_keeps_qid(tmp_path: Path) -> None:
    write_parquet(tmp_path / "3dsr" / "test-00000-of-00001.parquet", THREEDSR, THREEDSR_FEATURES)
    # the circular config sits beside it in the hub repository and must not be mixed in
    write_parquet(tmp_path / "3dsr_circular" / "test-00000-of-00001.parquet", THREEDSR[:1], THREEDSR_FEATURES)
    samples = load_benchmark("3dsrbench", data_dir=tmp_path)
    assert [(s.sample_id, s.options, s.target) for s in samples] == [
        ("0", ("yes", "no"), "A"),
        ("1", ("yes", "no"), "B"),
        ("2", ("left", "right", "towards", "away"), "D"),
        ("3", ("yes", "no"), None),
    ]
    assert "not among" in samples[3].error
    assert [s.meta["qid"] for s in samples[:3]] == ["VIN6MS3J", "VIN6MS3J-flip", "Q2BX81LM-1"]


def test_spatialmm_obj_release_json_and_images(tmp_path: Path) -> None:
    samples = load_benchmark("spatialmm-obj", data_dir=make_spatialmm(tmp_path))
    assert summary(samples)[:3] == [
        (
            "one_obj-0",
            "In which hand is the man holding the glass?",
            ("left", "right"),
            "B",
            None,
            "one_obj",
            None,
        ),
        ("one_obj-1", "Where is the building?", ("right", "front", "behind"), "A", None, "one_obj", None),
        ("two_obj-0", "Is the glass touching the watch?", ("yes", "no"), "B", None, "two_obj", None),
    ]
    assert "answer_disagrees" not in samples[0].meta
    assert samples[1].meta["answer_disagrees"] is True and samples[1].meta["answer_raw"] == "A. behind"
    assert "no options" in samples[3].error and samples[3].sample_id == "two_obj-1"
    assert load_image(samples[0].image).size == (8, 6)  # found in images/ by its file name
    with pytest.raises(Exception, match="not found"):
        load_image(samples[3].image)


def test_spatialmm_multihop_is_open_ended(tmp_path: Path) -> None:
    samples = load_benchmark("spatialmm-multihop", data_dir=make_spatialmm(tmp_path))
    assert [(s.options, s.target, s.answer_text, s.family, s.meta["hop"]) for s in samples] == [
        ((), None, "left", "2-hop", 2),
        ((), None, "pink", "3-hop", 3),
    ]
    assert all(s.is_open_ended and s.error is None for s in samples)


def test_whatsup_captions_shuffled_by_seed_with_the_true_caption_as_target(tmp_path: Path) -> None:
    root = make_whatsup(tmp_path)
    runs = {seed: load_benchmark("whatsup", data_dir=root, seed=seed) for seed in range(6)}
    for samples in runs.values():
        assert [s.family for s in samples] == ["controlled_images", "controlled_images", "controlled_clevr"]
        assert all(s.question == "Which caption describes the image?" and s.error is None for s in samples)
        trues = [s.option_text(s.target) for s in samples]
        assert trues == ["A beer bottle on a armchair", "A cup under a table", "A cube behind a sphere"]
        assert load_image(samples[0].image).size == (8, 6)
    assert summary(load_benchmark("whatsup", data_dir=root, seed=3)) == summary(runs[3])  # reproducible
    assert len({tuple(s.target for s in samples) for samples in runs.values()}) > 1  # the seed matters


def test_vstar_jsonl_with_image_folders(tmp_path: Path) -> None:
    samples = load_benchmark("vstar", data_dir=make_vstar(tmp_path))
    assert summary(samples) == [
        (
            "direct_attributes-0",
            "What is the color of the woman's jacket?",
            ("black", "red", "blue", "orange"),
            "B",
            None,
            "direct_attributes",
            None,
        ),
        (
            "relative_position-0",
            "Is the dog on the left or right side of the cat?",
            ("left", "right"),
            "A",
            None,
            "relative_position",
            None,
        ),
    ]
    assert samples[0].meta["instruction"].startswith("Answer with the option's letter")
    assert load_image(samples[1].image).getpixel((0, 0)) == (100, 10, 10)


def test_mmerealworld_base64_bytes_and_option_prefixes(tmp_path: Path) -> None:
    samples = load_benchmark("mmerealworld-lite", data_dir=make_mme(tmp_path))
    assert samples[0].options == ("red", "blue", "green", "white", "The image does not feature the car.")
    assert [(s.sample_id, s.target, s.meta["l2_category"]) for s in samples] == [
        ("11", "B", "color"),
        ("12", "A", "count"),
    ]
    assert load_image(samples[0].image).size == (8, 6)
    with pytest.raises(ValueError):  # a broken image surfaces at run time, not at load time
        load_image(samples[1].image)


def test_mmbench_vlmevalkit_tsv(tmp_path: Path) -> None:
    samples = load_benchmark("mmbench", data_dir=make_mmbench_tsv(tmp_path))
    assert [(s.sample_id, s.options, s.target) for s in samples[:3]] == [
        ("1", ("blue", "red", "green"), "A"),
        ("1000001", ("red", "green", "blue"), "C"),
        ("2", ("a cat", "a dog", "a cow", "a hen", "a fox"), "E"),
    ]
    assert samples[0].question == "The picture shows a wall.\nWhat is the main colour?"
    assert samples[2].question == "What is in the image?"
    assert samples[1].meta == {
        "index": 1000001,
        "category": "attribute_recognition",
        "source": "MMBench",
        "split": "dev",
        "l2_category": "finegrained_perception",
    }
    assert "not among" in samples[3].error and samples[3].options == ("x", "y")
    assert load_image(samples[1].image).getpixel((0, 0)) == (0, 128, 255)  # shared image resolved
    # --data-dir may also name the file itself
    assert summary(load_benchmark("mmbench", data_dir=tmp_path / "MMBench_DEV_EN.tsv")) == summary(samples)


def test_mmstar_options_split_out_of_the_question(tmp_path: Path) -> None:
    samples = load_benchmark("mmstar", data_dir=make_mmstar(tmp_path))
    assert samples[0].question == "Which option describe the object relationship in the image correctly?"
    assert samples[0].options[0] == "The suitcase is on the book." and len(samples[0].options) == 4
    assert (samples[1].options, samples[1].target, samples[1].meta["l2_category"]) == (
        ("3", "4", "5", "6"),
        "B",
        "geometry",
    )
    assert "no options" in samples[2].error


def test_limit_spans_configs_and_files(tmp_path: Path) -> None:
    root = make_cvbench(tmp_path)
    assert [s.sample_id for s in load_benchmark("cvbench", data_dir=root, limit=1)] == ["2D-0"]
    assert [s.sample_id for s in load_benchmark("cvbench", data_dir=root, limit=3)] == [
        "2D-0",
        "2D-1",
        "3D-0",
    ]


def test_data_dir_problems_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not on the hub"):
        load_benchmark("whatsup")
    with pytest.raises(UsageError, match="data dir not found"):
        load_benchmark("mmbench", data_dir=tmp_path / "nope")
    with pytest.raises(UsageError, match="no spatialmm-obj files"):
        load_benchmark("spatialmm-obj", data_dir=tmp_path)
    with pytest.raises(UsageError, match="unknown benchmark"):
        load_benchmark("mmmu")


# ---------------------------------------------------------------------------------------------------
# The hub path: datasets.load_dataset with the right id/config/split, no network


HUB_CASES = {
    "cvbench": {
        ("nyu-visionx/CV-Bench", "2D", "test"): (CV_2D, CV_FEATURES),
        ("nyu-visionx/CV-Bench", "3D", "test"): (CV_3D, CV_FEATURES),
    },
    "3dsrbench": {("oscarqjh/3DSRBench_lmmseval", "3dsr", "test"): (THREEDSR, THREEDSR_FEATURES)},
    "mmerealworld-lite": {("yifanzhang114/MME-RealWorld-lite-lmms-eval", None, "train"): (MME, MME_FEATURES)},
    "mmbench": {("lmms-lab/MMBench", "en", "dev"): (MMBENCH, MMB_FEATURES)},
    "mmstar": {("Lin-Chen/MMStar", None, "val"): (MMSTAR, MMSTAR_FEATURES)},
    "vstar": {("craigwu/vstar_bench", None, "test"): (VSTAR, None)},
}


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, list]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    calls: dict[str, list] = {"load_dataset": [], "snapshot_download": []}
    tables = {key: value for case in HUB_CASES.values() for key, value in case.items()}

    def load_dataset(path: str, name: str | None = None, *, split: str | None = None, **kwargs: Any):
        calls["load_dataset"].append((path, name, split))
        rows, features = tables[(path, name, split)]
        return datasets.Dataset.from_list(rows, features=features)

    def snapshot_download(repo_id: str, *, repo_type: str, allow_patterns: list[str], **kwargs: Any) -> str:
        calls["snapshot_download"].append((repo_id, repo_type, allow_patterns))
        return str(make_vstar(tmp_path / "snapshot"))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def make_threedsr(root: Path) -> Path:
    write_parquet(root / "3dsr" / "test-00000-of-00001.parquet", THREEDSR, THREEDSR_FEATURES)
    return root


def make_mme(root: Path) -> Path:
    write_parquet(root / "data" / "train-00000-of-00001.parquet", MME, MME_FEATURES)
    return root


def make_mmstar(root: Path) -> Path:
    write_parquet(root / "mmstar.parquet", MMSTAR, MMSTAR_FEATURES)
    return root


LOCAL_COPIES = {
    "cvbench": make_cvbench,
    "3dsrbench": make_threedsr,
    "mmerealworld-lite": make_mme,
    "mmbench": make_mmbench_tsv,
    "mmstar": make_mmstar,
    "vstar": make_vstar,
}
EXPECTED_ERRORS = {"3dsrbench": {"3"}, "mmbench": {"3"}, "mmstar": {"2"}}


@pytest.mark.parametrize("name", sorted(HUB_CASES))
def test_hub_loading_goes_through_datasets(name: str, fake_hub: dict[str, list], tmp_path: Path) -> None:
    samples = load_benchmark(name)
    assert fake_hub["load_dataset"] == list(HUB_CASES[name])
    assert {s.sample_id for s in samples if s.error} == EXPECTED_ERRORS.get(name, set())
    assert isinstance(samples[0].image, dict | str)  # still undecoded
    assert load_image(samples[0].image).size == (8, 6)
    # the same rows from a local copy (hub layout, or the release / VLMEvalKit file) give the same samples
    local = load_benchmark(name, data_dir=LOCAL_COPIES[name](tmp_path / "local"))
    assert summary(samples) == summary(local)
    assert [s.meta for s in samples] == [s.meta for s in local]


def test_hub_vstar_fetches_only_the_named_images(fake_hub: dict[str, list]) -> None:
    hub_vstar = load_benchmark("vstar")
    assert fake_hub["snapshot_download"] == [
        ("craigwu/vstar_bench", "dataset", ["direct_attributes/sa_4690.jpg", "relative_position/sa_10.jpg"])
    ]
    assert load_image(hub_vstar[1].image).getpixel((0, 0)) == (100, 10, 10)


def test_hub_limit_selects_before_converting(fake_hub: dict[str, list]) -> None:
    assert [s.sample_id for s in load_benchmark("mmbench", limit=2)] == ["1", "1000001"]


def test_hub_failure_is_one_usage_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Couldn't reach 'lmms-lab/MMBench' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UsageError, match="--data-dir") as info:
        load_benchmark("mmbench")
    assert "\n" not in str(info.value) and "lmms-lab/MMBench" in str(info.value)


# ---------------------------------------------------------------------------------------------------
# Options inside question text


@pytest.mark.parametrize(
    ("text", "question", "options", "rest"),
    [
        ("In which hand?\nA. left\nB. right", "In which hand?", ("left", "right"), ""),
        (
            "How many? Select from the following choices.\n(A) 3\n(B) 2\n(C) 1",
            "How many? Select from the following choices.",
            ("3", "2", "1"),
            "",
        ),
        (
            "Colour?\n(A) black\n(B) red\nAnswer with the letter.",
            "Colour?",
            ("black", "red"),
            "Answer with the letter.",
        ),
        ("Is it (A) a cat (B) a dog (C) a cow", "Is it", ("a cat", "a dog", "a cow"), ""),
        (
            "What is shown?\nOptions: A: A cat, sitting., B: Two dogs, C: 3, 4, and 5, D: None",
            "What is shown?",
            ("A cat, sitting.", "Two dogs", "3, 4, and 5", "None"),
            "",
        ),
    ],
)
def test_split_inline_options(text: str, question: str, options: tuple[str, ...], rest: str) -> None:
    assert split_inline_options(text) == (question, options, rest)


@pytest.mark.parametrize(
    "text", ["Plan A. is fine", "Only (A) one option", "A. x\nC. y", "No options at all"]
)
def test_split_inline_options_needs_two_options_in_order(text: str) -> None:
    assert split_inline_options(text) is None


def test_strip_option_prefixes() -> None:
    assert strip_option_prefixes(["(A) red", "(B) 2 cars", "C. green", "no prefix"]) == (
        "red",
        "2 cars",
        "green",
        "no prefix",
    )


# ---------------------------------------------------------------------------------------------------
# Official aggregates


def test_cvbench_formula() -> None:
    pairs = [({"source": "ADE20K"}, True), ({"source": "ADE20K"}, False), ({"source": "COCO"}, True)]
    pairs += [({"source": "Omni3D"}, c) for c in (True, False, False, False)]
    scores = aggregate("cvbench", pairs)
    assert scores["accuracy"] == pytest.approx(3 / 7)
    assert scores["accuracy_2d"] == pytest.approx(0.75)  # (0.5 + 1.0) / 2, not 2/3 pooled
    assert scores["accuracy_3d"] == pytest.approx(0.25)
    assert scores["cvbench_overall"] == pytest.approx(0.5)
    assert aggregate("cvbench", pairs[:3])["cvbench_overall"] is None  # no Omni3D: not computable


def test_mmstar_mean_of_l2_means() -> None:
    pairs = [({"l2_category": "a"}, c) for c in (True, True, True, False)] + [({"l2_category": "b"}, False)]
    scores = aggregate("mmstar", pairs)
    assert scores["mmstar_avg"] == pytest.approx(0.375)
    assert scores["accuracy"] == pytest.approx(0.6)
    assert scores["l2/a"] == pytest.approx(0.75)


def test_mmbench_circular_groups_by_index_mod_a_million() -> None:
    pairs = [
        ({"index": 1}, True),
        ({"index": 1000001}, True),
        ({"index": 2000001}, True),
        ({"index": 2}, True),
        ({"index": "1000002"}, False),
        ({"index": 3}, True),
    ]
    scores = aggregate("mmbench", pairs)
    assert scores["circular_accuracy"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == pytest.approx(5 / 6)


def test_threedsr_circular_and_flip() -> None:
    pairs = [
        ({"qid": "X"}, True),
        ({"qid": "X-1"}, True),
        ({"qid": "X-flip"}, False),
        ({"qid": "X-flip-1"}, True),
        ({"qid": "Y"}, True),
        ({"qid": "Y-flip"}, True),
    ]
    scores = aggregate("3dsrbench", pairs)
    assert scores["circular_accuracy"] == pytest.approx(3 / 4)  # X, X-flip, Y, Y-flip
    assert scores["flip_accuracy"] == pytest.approx(2 / 3)  # X+X-flip, X-1+X-flip-1, Y+Y-flip
    assert scores["flip_circular_accuracy"] == pytest.approx(1 / 2)  # X, Y


def test_plain_accuracy_elsewhere_and_none_when_empty() -> None:
    assert aggregate("vstar", [({}, True), ({}, False)]) == {"accuracy": 0.5}
    assert aggregate("mmbench", []) == {"accuracy": None, "circular_accuracy": None}
    assert set(benchmarks.BENCHMARKS) == {
        "cvbench",
        "3dsrbench",
        "spatialmm-obj",
        "spatialmm-multihop",
        "whatsup",
        "vstar",
        "mmerealworld-lite",
        "mmbench",
        "mmstar",
    }


# ---------------------------------------------------------------------------------------------------
# load_data: the Data SPEC


@pytest.fixture
def fake_synth(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    def generate(n: int, *, seed: int = 0, split: str = "test", hard_share: float = 0.0) -> list[Sample]:
        calls.append((n, seed, split, hard_share))
        return [Sample(sample_id=f"s{i}", question="Q?", options=("a", "b"), target="A") for i in range(n)]

    fake = types.ModuleType("vlmstress.data.synth")
    fake.generate = generate  # type: ignore[attr-defined]
    fake.HARD_SHARE = 0.4  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vlmstress.data.synth", fake)
    monkeypatch.setattr(vlmstress.data, "synth", fake, raising=False)
    return calls


def test_load_data_synth(fake_synth: list[tuple]) -> None:
    samples, name = load_data("synth")
    assert (len(samples), name, fake_synth[-1]) == (200, "synth:200", (200, 0, "test", 0.0))
    samples, name = load_data("synth:5", seed=3, limit=2)
    assert ([s.sample_id for s in samples], name, fake_synth[-1]) == (
        ["s0", "s1"],
        "synth:5",
        (5, 3, "test", 0.0),
    )
    samples, name = load_data("synth-hard:7")
    assert (len(samples), name, fake_synth[-1]) == (7, "synth-hard:7", (7, 0, "test", 0.4))
    for bad in ("synth:0", "synth:-2", "synth:many"):
        with pytest.raises(UsageError, match="positive whole number"):
            load_data(bad)


def test_load_data_benchmark_and_file(tmp_path: Path) -> None:
    root = make_mmbench_tsv(tmp_path / "mmb")
    samples, name = load_data("MMBench", data_dir=str(root), limit=2)
    assert (name, [s.sample_id for s in samples]) == ("mmbench", ["1", "1000001"])
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"question": "Q?", "options": ["a", "b"], "answer": "b"}) + "\n")
    samples, name = load_data(str(path))
    assert (name, samples[0].target) == (str(path.resolve()), "B")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("imagenet", "unknown data 'imagenet': use synth or synth:N, a benchmark (cvbench"),
        ("missing.parquet", "data file not found"),
        ("", "unknown data"),
    ],
)
def test_load_data_rejects_unknown_specs(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        load_data(spec)


def test_load_data_rejects_negative_limit(fake_synth: list[tuple]) -> None:
    with pytest.raises(UsageError, match="limit"):
        load_data("synth", limit=-1)

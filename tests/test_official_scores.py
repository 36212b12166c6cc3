import pytest

from vlmstress.data.schema import Sample
from vlmstress.runner import official_scores


def test_cvbench_official_score_beside_plain_accuracy():
    # ADE20K 2/2, COCO 1/1, Omni3D 1/2: plain accuracy 4/5 = 0.8, while CV-Bench's official
    # 1/2 x ((ADE20K + COCO) / 2 + Omni3D) = 1/2 x ((1 + 1) / 2 + 0.5) = 0.75
    sources = {"a": "ADE20K", "b": "ADE20K", "c": "COCO", "d": "Omni3D", "e": "Omni3D"}
    samples = [Sample(sid, "q", ("x", "y"), "A", meta={"source": src}) for sid, src in sources.items()]
    correct = {"a": True, "b": True, "c": True, "d": True, "e": False}
    records = [{"sample_id": s, "variant": "base", "correct": c, "error": None} for s, c in correct.items()]
    base = official_scores("cvbench", samples, records)["base"]
    assert base["accuracy"] == pytest.approx(0.8)
    assert base["cvbench_overall"] == pytest.approx(0.75)
    assert official_scores("synth:5", samples, records) is None

from vlmstress.data import synth
from vlmstress.models.tiny import ASSET_DIR, load_tiny
from vlmstress.parse import parse
from vlmstress.perturb import perturb


def test_shipped_weights_load_and_see():
    """The packaged checkpoint is the trained one: on 40 test samples it beats chance (25%) clearly
    (it scores 90% there, 91.5% on synth:200; the weights before it scored 67.5% and 73%),
    answers in the study's format, and follows a wrong reasoning placed in its mouth."""
    assert (ASSET_DIR / "model.safetensors").stat().st_size < 20 * 2**20
    model = load_tiny()
    samples = synth.generate(40, seed=0, split="test")
    base = [perturb(s, "base", 0) for s in samples]
    gens = model.generate(base, max_new_tokens=48)
    answers = [parse(p.prefill + g.text, p.options) for p, g in zip(base, gens)]
    assert all(a.parsed and a.think for a in answers)
    accuracy = sum(a.answer == s.target for a, s in zip(answers, samples)) / len(samples)
    assert accuracy >= 0.8
    wrong = [perturb(s, "wrong_think", 0) for s in samples]
    followed = sum(
        parse(p.prefill + g.text, p.options).answer == p.misleading
        for p, g in zip(wrong, model.generate(wrong, max_new_tokens=16))
    )
    assert followed / len(samples) >= 0.75

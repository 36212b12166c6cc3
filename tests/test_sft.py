import json

from vlmstress.cli import main
from vlmstress.data import synth
from vlmstress.models.registry import load_model
from vlmstress.perturb import perturb


def test_train_sft_writes_a_checkpoint_the_eval_loads(tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(
        "kind: sft\nsize: test\nmax_steps: 4\nbatch_size: 4\npool: 40\nvision_pretrain_steps: 2\n"
        "warmup_steps: 1\neval_every: 4\neval_samples: 5\n"
        "curriculum:\n  - until: 0.5\n    mix: {lookup: 1.0}\n"
        "  - until: 1.0\n    mix: {qa: 0.5, describe: 0.5}\n"
    )
    out = tmp_path / "ckpt"
    assert main(["train", "sft", "--config", str(cfg), "--out", str(out)]) == 0
    assert (out / "model.safetensors").exists()
    log = json.loads((out / "train_log.json").read_text())
    assert log["history"][-1]["step"] == 4 and 0.0 <= log["history"][-1]["all"] <= 1.0
    model = load_model(f"tiny:{out}")
    gen = model.generate([perturb(synth.generate(1)[0], "base", 0)], max_new_tokens=4)[0]
    assert gen.error is None and gen.letter_probs is not None
    assert abs(sum(gen.letter_probs.values()) - 1) < 1e-5

from dataclasses import replace

from vlmstress.cli import main
from vlmstress.data import synth
from vlmstress.data.schema import Sample
from vlmstress.plan import plan_run


def test_plan_counts_requests_and_prices():
    samples = synth.generate(10)
    plan = plan_run(
        samples,
        ["base", "wrong_think"],
        seed=0,
        template="vlmstress",
        max_new_tokens=100,
        llm_judges=1,
        image_tokens=50,
        price_in=1.0,
        price_out=2.0,
    )
    assert plan.model_requests == 20 and plan.judge_requests == 20
    assert plan.max_generated_tokens == 20 * 100 + 20 * 64
    # images: 20 x 50; judge completions read: 20 x 100; text on top of both
    assert plan.prompt_tokens > 20 * 50 + 20 * 100
    assert plan.cost == round((plan.prompt_tokens * 1.0 + plan.max_generated_tokens * 2.0) / 1e6, 4)
    assert (
        plan_run(samples, ["base"], seed=0, template="vlmstress", max_new_tokens=8, llm_judges=0).cost is None
    )


def test_the_system_prompt_is_counted_in_every_request(capsys):
    samples = synth.generate(4)
    kwargs = {"seed": 0, "template": "vlmstress", "max_new_tokens": 8, "llm_judges": 0}
    plain = plan_run(samples, ["base"], **kwargs)
    with_system = plan_run(samples, ["base"], system="x" * 400, **kwargs)
    assert with_system.prompt_tokens - plain.prompt_tokens in (399, 400, 401)  # 4 requests x 100 tokens
    # the command line passes the run's own system prompt
    main(["eval", "--model", "tiny", "--data", "synth:4", "--variants", "base", "--dry-run"])
    bare = capsys.readouterr().out
    main(
        [
            "eval",
            "--model",
            "tiny",
            "--data",
            "synth:4",
            "--variants",
            "base",
            "--dry-run",
            "--system",
            "y" * 400,
        ]
    )
    assert '"prompt_tokens"' in bare and bare != capsys.readouterr().out


def test_dry_run_loads_no_model_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["eval", "--model", "hf:/nonexistent/checkpoint", "--data", "synth:4", "--dry-run", "--out", str(out)]
    )
    assert code == 0
    assert '"model_requests": 36' in capsys.readouterr().out
    assert not out.exists()


def test_dry_run_under_a_launcher_prints_once(tmp_path, capsys, monkeypatch):
    args = ["eval", "--model", "tiny", "--data", "synth:4", "--dry-run", "--out", str(tmp_path / "run")]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(args) == 0 and capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert main(args) == 0 and '"model_requests": 36' in capsys.readouterr().out


def test_plan_counts_every_image_of_a_multi_image_sample():
    one = Sample("one", "Which?", ("a", "b"), "A", image=b"x")
    two = replace(one, sample_id="two", extra_images=(b"y",))
    tokens = [
        plan_run(
            [s], ["base"], seed=0, template="vlmstress", max_new_tokens=0, llm_judges=0, image_tokens=100
        )
        for s in (one, two)
    ]
    assert tokens[1].prompt_tokens - tokens[0].prompt_tokens == 100


def test_dry_run_counts_image_tokens_with_the_models_own_processor(capsys):
    """The tiny model's processor makes a 64 px synth image 16 tokens (8 x 8 patches of 8 px, 2 x 2
    merged); a checkpoint not on this machine leaves the stated default; --image-tokens wins."""
    import json

    def plan(*extra):
        assert main(["eval", "--data", "synth:5", "--variants", "base", "--dry-run", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    tiny = plan("--model", "tiny")
    assert tiny["image_tokens"] == 16 and tiny["image_tokens_from"].startswith("processor: ")
    missing = plan("--model", "hf:/nonexistent/checkpoint")
    assert missing["image_tokens"] == 1200 and missing["image_tokens_from"].startswith("default (")
    server = plan("--model", "openai:m@http://127.0.0.1:9/v1")
    assert server["image_tokens"] == 1200 and "no local processor" in server["image_tokens_from"]
    given = plan("--model", "tiny", "--image-tokens", "7")
    assert (given["image_tokens"], given["image_tokens_from"]) == (7, "--image-tokens")
    assert given["prompt_tokens"] < tiny["prompt_tokens"]

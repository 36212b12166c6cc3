"""System prompts: the documented ones of the paper's models, and how a run picks its own.

A model trained with a system prompt is measured unfairly without it, so a hub id listed in
DOCUMENTED gets its prompt unless the caller says otherwise (`--system TEXT`, or `--system ''` for
none). Only prompts confirmed from the authors' own release are listed (docs/models.md says where
each is from and which models are left out, and why).
"""

from __future__ import annotations

from vlmstress.models.registry import parse_spec

# VLAA-Thinker: the system turn of the official inference script (github.com/UCSC-VLAA/VLAA-Thinking,
# inference.py, the same for every VLAA-Thinker checkpoint it lists).
_VLAA_THINKER = (
    "You are VL-Thinking\U0001f914, a helpful assistant with excellent reasoning ability."
    " A user asks you a question, and you should try to solve it."
    " You should first think about the reasoning process in the mind"
    " and then provides the user with the answer."
    " The reasoning process and answer are enclosed within <think> </think> and"
    " <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think>"
    " <answer> answer here </answer>"
)

DOCUMENTED: dict[str, str] = {
    "UCSC-VLAA/VLAA-Thinker-Qwen2.5VL-7B": _VLAA_THINKER,
    "UCSC-VLAA/VLAA-Thinker-Qwen2.5VL-3B": _VLAA_THINKER,
}


def documented_system(model: str) -> str | None:
    """The documented system prompt of a model SPEC's hub id (`hf:ID`, `vllm:ID`, or the served
    model name of `openai:ID@URL`, which vLLM sets to the hub id), or None."""
    try:
        kind, target = parse_spec(model)
    except ValueError:
        return None
    if kind == "openai" and target:
        target = target.partition("@")[0].strip()
    return DOCUMENTED.get(target or "") if kind in ("hf", "vllm", "openai") else None


def resolve_system(model: object, system: str | None) -> str | None:
    """The system prompt a run uses: `system` as given, none for an empty one, else the documented
    prompt of a model SPEC (a model object has no hub id to look up)."""
    if system is not None:
        return system or None
    return documented_system(model) if isinstance(model, str) else None

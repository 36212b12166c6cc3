"""vlmstress: stress-test the reasoning of vision-language models and train them to stay honest.

The Python API (docs/api.md): `evaluate`, `EvalResult`, `train_grpo`, `report`, and
`register_variant` / `register_reward` for user perturbations and GRPO rewards.
"""

__version__ = "0.1.0"

__all__ = ["EvalResult", "evaluate", "register_reward", "register_variant", "report", "train_grpo"]

# Where each exported name lives. They are imported on first use (PEP 562), so that importing any
# vlmstress module, or starting the command line, does not load the whole evaluation stack.
_EXPORTS = {
    "evaluate": "vlmstress.api",
    "EvalResult": "vlmstress.api",
    "train_grpo": "vlmstress.api",
    "report": "vlmstress.api",
    "register_variant": "vlmstress.perturb",
    "register_reward": "vlmstress.train.rewards",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vlmstress' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(_EXPORTS[name]), name)

"""vlmstress: stress-test the reasoning of vision-language models and train them to stay honest.

The Python API (docs/api.md): `evaluate`, `EvalResult`, `train_grpo`, `report`, and the `register_*`
functions through which user code adds what runs name: perturbations (`register_variant`), prompt
templates, model backends, judges, metrics, GRPO rewards, augmentation kinds and training sources.
"""

__version__ = "0.1.0"

__all__ = [
    "EvalResult",
    "evaluate",
    "register_augmentation",
    "register_backend",
    "register_judge",
    "register_metric",
    "register_reward",
    "register_source",
    "register_template",
    "register_variant",
    "report",
    "train_grpo",
]

# Where each exported name lives. They are imported on first use (PEP 562), so that importing any
# vlmstress module, or starting the command line, does not load the whole evaluation stack.
_EXPORTS = {
    "evaluate": "vlmstress.api",
    "EvalResult": "vlmstress.api",
    "train_grpo": "vlmstress.api",
    "report": "vlmstress.report.build",
    "register_variant": "vlmstress.perturb",
    "register_template": "vlmstress.perturb",
    "register_backend": "vlmstress.models.registry",
    "register_judge": "vlmstress.models.registry",
    "register_metric": "vlmstress.metrics",
    "register_reward": "vlmstress.train.rewards",
    "register_augmentation": "vlmstress.train.augment",
    "register_source": "vlmstress.train.data",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vlmstress' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(_EXPORTS[name]), name)

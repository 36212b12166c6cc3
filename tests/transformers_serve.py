"""`transformers serve`, the real OpenAI-compatible server of transformers[serving], for tests.

Run as `python tests/transformers_serve.py MODEL_DIR --port N ...` (the arguments of `transformers
serve`). The one change: the server loads its processor with vlmstress's `load_processor`, because
Qwen2.5-VL's stock processor also builds a video processor, which needs torchvision (not a
dependency of this project, and PyPI's build does not import beside the CPU torch). Everything a
request meets (the FastAPI app, request validation, the chat template, image decoding, generation,
the reasoning split of the reply) is the server's own code.
"""

from __future__ import annotations

import sys

from transformers.cli.serving import model_manager

from vlmstress.models.hf import load_processor


def _load_processor_524(self, model_id_and_revision: str, gguf_file: str | None = None):
    model_id, revision = model_manager.split_revision(model_id_and_revision)
    return load_processor(model_id, revision=revision)


def _load_processor(self, model_id: str):
    repo, revision, _ = model_manager.parse_model_id(model_id)
    return load_processor(repo, revision=revision)


# At import, not under __main__: from transformers 5.25 the model loads in a process of its own,
# started with "spawn", which imports this file again (as __mp_main__) and so patches its loader too.
if hasattr(model_manager, "ModelLoader"):  # transformers >= 5.25
    model_manager.ModelLoader.load_processor = _load_processor
else:  # transformers 5.24 and before: one process, the manager loads the processor
    model_manager.ModelManager._load_processor = _load_processor_524


if __name__ == "__main__":
    from transformers.cli.transformers import main

    sys.argv = ["transformers", "serve", *sys.argv[1:]]
    sys.exit(main())

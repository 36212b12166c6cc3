"""How a training run's weights are laid out over its processes: a module of its own because the
trainer (grpo), its evaluation callback (dynamics) and the length-grouped trainer all ask."""

from __future__ import annotations

from typing import Any


def weights_sharded(accelerator: Any) -> bool:
    """Whether the training processes each hold only a slice of the weights (ZeRO-3, FSDP)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = accelerator.state.deepspeed_plugin
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin.zero_stage == 3

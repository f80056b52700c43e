"""DeepSpeed's enums of offload values (``deepspeed.runtime.zero.offload_config``).

``OffloadDeviceEnum`` names the values ``offload_param.device`` / ``offload_optimizer.device`` take
(the config models in :mod:`ds_engine.config.zero` validate them); ``OffloadStateTypeEnum`` names the
state kinds DeepSpeed's ``engine.offload_states(include=...)`` accepts. Both are ``str`` enums, so a
member compares equal to its plain-string value.
"""

from __future__ import annotations

from enum import Enum


class OffloadDeviceEnum(str, Enum):
    """Where offloaded tensors live."""

    none = "none"
    cpu = "cpu"
    nvme = "nvme"


class OffloadStateTypeEnum(str, Enum):
    """Kinds of training state that can be moved off the accelerator."""

    optim_states = "optim_states"
    hp_params = "hp_params"
    lp_params = "lp_params"
    lp_grads = "lp_grads"
    contiguous_grad_buffer = "contiguous_grad_buffer"

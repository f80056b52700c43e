"""DeepSpeed's enums of offload values (``deepspeed.runtime.zero.offload_config``).

``OffloadDeviceEnum`` names the values ``offload_param.device`` / ``offload_optimizer.device`` take
(the config models in :mod:`ds_engine.config.zero` validate them) and where ``offload_states`` moves
states; ``OffloadStateTypeEnum`` names the state kinds ``engine.offload_states(include=...)`` accepts.
Both are ``str`` enums, so a member compares equal to its plain-string value. They are defined once,
in :mod:`ds_zero.state_offload`, which moves the states.
"""

from __future__ import annotations

from ds_zero.state_offload import OffloadDeviceEnum, OffloadStateTypeEnum

__all__ = ["OffloadDeviceEnum", "OffloadStateTypeEnum"]

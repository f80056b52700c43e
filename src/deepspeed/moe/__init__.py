"""`deepspeed.moe`: DeepSpeed's mixture-of-experts paths (implemented in ds_parallel.moe)."""

from deepspeed.moe import experts, layer, sharded_moe, utils  # noqa: F401 - DeepSpeed's submodules

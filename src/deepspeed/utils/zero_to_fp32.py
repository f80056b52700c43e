"""`deepspeed.utils.zero_to_fp32`: one consolidated fp32 state dict from a ZeRO checkpoint (ds_zero.consolidate).

Also runnable: ``python -m deepspeed.utils.zero_to_fp32 <checkpoint_dir> <output_dir> [--safe_serialization]``.
"""

import sys

from ds_zero.consolidate import (
    convert_zero_checkpoint_to_fp32_state_dict,
    get_fp32_state_dict_from_zero_checkpoint,
    get_model_state_file,
    get_model_state_files,
    get_optim_files,
    load_state_dict_from_zero_checkpoint,
    main,
)

__all__ = [
    "convert_zero_checkpoint_to_fp32_state_dict",
    "get_fp32_state_dict_from_zero_checkpoint",
    "get_model_state_file",
    "get_model_state_files",
    "get_optim_files",
    "load_state_dict_from_zero_checkpoint",
    "main",
]

if __name__ == "__main__":
    sys.exit(main())

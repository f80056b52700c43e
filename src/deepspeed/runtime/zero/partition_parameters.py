"""`deepspeed.runtime.zero.partition_parameters`: the module clients patch around `zero.Init`.

Aliases of `ds_zero.stage3`, including the module-level originals of torch's tensor constructors
(`_orig_torch_arange` & co.) and the constructor-wrapper helpers that clients read here.
"""

from deepspeed import zero as _zero
from deepspeed.zero import *  # noqa: F403
from ds_zero.stage3.zero_init import (
    _orig_torch_arange,
    _orig_torch_empty,
    _orig_torch_eye,
    _orig_torch_full,
    _orig_torch_ones,
    _orig_torch_randn,
    _orig_torch_tensor,
    _orig_torch_zeros,
    get_new_tensor_fn_for_dtype,
    zero_wrapper_for_fp_tensor_constructor,
)

__all__ = [
    *_zero.__all__,
    "_orig_torch_arange",
    "_orig_torch_empty",
    "_orig_torch_eye",
    "_orig_torch_full",
    "_orig_torch_ones",
    "_orig_torch_randn",
    "_orig_torch_tensor",
    "_orig_torch_zeros",
    "get_new_tensor_fn_for_dtype",
    "zero_wrapper_for_fp_tensor_constructor",
]

"""``deepspeed.git_version_info``: the version and the op table ``ds_report`` and clients read.

``installed_ops`` / ``compatible_ops`` come from the op builders (:mod:`ds_kernels.op_builder`: no
compile step, so an op is installed exactly when it is implemented); ``torch_info`` describes the
torch this process runs (:func:`ds_accel.info.torch_info`).
"""

from deepspeed._version_info import __version__ as version
from ds_accel.info import torch_info as _torch_info
from ds_kernels.op_builder import compatible_ops as _compatible_ops
from ds_kernels.op_builder import installed_ops as _installed_ops

git_hash = "[none]"  # not built from a git checkout: DeepSpeed's own value for that case
git_branch = "[none]"
installed_ops = _installed_ops()
compatible_ops = _compatible_ops()
torch_info = _torch_info()

__all__ = ["compatible_ops", "git_branch", "git_hash", "installed_ops", "torch_info", "version"]

"""``deepspeed.ops.*`` (the meta-package's compatibility modules) alias ds_kernels' optimizers.

Here rather than in ds-kernels' own tests, whose session installs ds-kernels alone."""

import importlib

import pytest

import ds_kernels as K

ALIASES = {
    "deepspeed.ops.adam": ("FusedAdam", "DeepSpeedCPUAdam"),
    "deepspeed.ops.lamb": ("FusedLamb",),
    "deepspeed.ops.lion": ("FusedLion", "DeepSpeedCPULion"),
    "deepspeed.ops.adagrad": ("DeepSpeedCPUAdagrad",),
}


@pytest.mark.parametrize("module", list(ALIASES))
def test_deepspeed_ops_names_are_ds_kernels_classes(module):
    mod = importlib.import_module(module)
    for name in ALIASES[module]:
        assert getattr(mod, name) is getattr(K, name)

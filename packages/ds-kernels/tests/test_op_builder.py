"""DeepSpeed's op builders answer truthfully: what is implemented loads (and works), what is not refuses."""

from __future__ import annotations

import pytest
import torch

from ds_kernels import op_builder as ob


@pytest.mark.parametrize(
    ("builder", "optimizer"),
    [
        (ob.CPUAdamBuilder, "DeepSpeedCPUAdam"),
        (ob.FusedAdamBuilder, "FusedAdam"),
        (ob.FusedLambBuilder, "FusedLamb"),
        (ob.CPUAdagradBuilder, "DeepSpeedCPUAdagrad"),
        (ob.CPULionBuilder, "DeepSpeedCPULion"),
        (ob.FusedLionBuilder, "FusedLion"),
    ],
)
def test_implemented_ops_load_a_working_optimizer(builder, optimizer):
    op = builder()
    assert op.is_compatible() and op.is_compatible(verbose=True)
    module = op.load()
    p = torch.nn.Parameter(torch.ones(4))
    opt = getattr(module, optimizer)([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    assert (p.detach() < 1).all()  # the loaded implementation really stepped
    assert op.jit_load() is module


@pytest.mark.parametrize(
    "builder", [ob.InferenceBuilder, ob.TransformerBuilder, ob.QuantizerBuilder, ob.SparseAttnBuilder]
)
def test_missing_ops_refuse_naming_the_op(builder):
    op = builder()
    assert not op.is_compatible()
    with pytest.raises(ImportError, match=f"'{builder.NAME}'.*not available"):
        op.load()
    with pytest.raises(ob.OpNotAvailableError):
        op.builder()


def test_all_ops_and_the_op_tables():
    assert set(ob.ALL_OPS) == {cls.NAME for cls in ob.BUILDERS}
    assert all(isinstance(op, ob.OpBuilder) and op.name == name for name, op in ob.ALL_OPS.items())
    installed = ob.installed_ops()
    assert installed == ob.compatible_ops()
    assert installed["cpu_adam"] and installed["fused_lion"] and not installed["sparse_attn"]


def test_accelerator_finds_the_builders():
    from ds_accel import get_accelerator

    assert get_accelerator().get_op_builder("FusedLambBuilder") is ob.FusedLambBuilder
    assert isinstance(get_accelerator().create_op_builder("AsyncIOBuilder"), ob.AsyncIOBuilder)

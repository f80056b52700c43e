"""``deepspeed.checkpointing`` (ds_engine.activation_checkpointing): configure, checkpoint, their options.

Single process, no clients needed: gradients with and without checkpointing are compared directly.
(Lightning's strategy calling ``configure`` and a checkpointed model training under ZeRO on 2 ranks
is in ``test_lightning.py``.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch

import deepspeed
import deepspeed.checkpointing as ckpt
from ds_engine import activation_checkpointing
from ds_engine.config import DeepSpeedConfigError


@pytest.fixture(autouse=True)
def _fresh_policy() -> Iterator[None]:
    """Each test starts unconfigured, as a new process does."""
    saved = activation_checkpointing._policy
    activation_checkpointing._policy = None
    yield
    activation_checkpointing._policy = saved


def _block(seed: int = 0, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Dropout(dropout), torch.nn.Linear(16, 6)
    )


def _grads(block: torch.nn.Module, run) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:  # noqa: ANN001
    """Output, parameter gradients and input gradient of ``run(block, x)`` on a fixed input."""
    block.zero_grad(set_to_none=True)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = run(block, x)
    (out * torch.arange(6.0)).sum().backward()
    return out.detach(), [p.grad.clone() for p in block.parameters()], x.grad.clone()


def test_module_paths_are_deepspeeds() -> None:
    from deepspeed.runtime.activation_checkpointing import checkpointing as runtime_path

    assert deepspeed.checkpointing is ckpt
    assert runtime_path.checkpoint is ckpt.checkpoint is activation_checkpointing.checkpoint
    assert runtime_path.configure is ckpt.configure


def test_configure_marks_configured_and_keeps_explicit_options() -> None:
    assert not ckpt.is_configured()
    ckpt.configure(None, partition_activations=True, checkpoint_in_cpu=True, profile=False)
    assert ckpt.is_configured()
    policy = ckpt.current_policy()
    assert (policy.partition_activations, policy.checkpoint_in_cpu, policy.synchronize) == (True, True, False)


def test_configure_reads_the_config_section_and_arguments_override_it(tmp_path) -> None:  # noqa: ANN001
    config = {
        "train_batch_size": 8,
        "activation_checkpointing": {
            "partition_activations": True,
            "cpu_checkpointing": True,
            "synchronize_checkpoint_boundary": True,
            "number_checkpoints": 4,
        },
    }
    ckpt.configure(None, deepspeed_config=config, synchronize=False)
    policy = ckpt.current_policy()
    assert (policy.partition_activations, policy.checkpoint_in_cpu, policy.num_checkpoints) == (True, True, 4)
    assert policy.synchronize is False  # the explicit argument wins

    path = tmp_path / "ds_config.json"
    path.write_text('{"activation_checkpointing": {"profile": true}}')
    ckpt.configure(mpu_=None, deepspeed_config=str(path))
    assert ckpt.current_policy().profile and not ckpt.current_policy().partition_activations


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"deepspeed_config": {"activation_checkpointing": {"cpu_checkpoint": True}}},
            "unknown key 'activation_checkpointing.cpu_checkpoint'; did you mean 'activation_checkpointing.cpu_checkpointing'?",
        ),
        (
            {"contiguous_checkpointing": True, "num_checkpoints": 2},
            "'activation_checkpointing.contiguous_memory_optimization' needs 'activation_checkpointing.partition_activations: true'",
        ),
        (
            {"contiguous_checkpointing": True, "partition_activations": True},
            "needs 'activation_checkpointing.number_checkpoints'",
        ),
    ],
)
def test_configure_rejects_bad_options_naming_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(DeepSpeedConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        ckpt.configure(None, **kwargs)
    assert not ckpt.is_configured()


def test_configure_refuses_model_parallelism() -> None:
    class TwoWayModelParallel:
        def get_model_parallel_world_size(self) -> int:
            return 2

    with pytest.raises(NotImplementedError, match="model parallelism"):
        ckpt.configure(TwoWayModelParallel())


@pytest.mark.parametrize("form", [ckpt.checkpoint, ckpt.non_reentrant_checkpoint])
def test_checkpoint_gives_the_same_output_and_gradients(form) -> None:  # noqa: ANN001
    # Dropout draws its mask twice (forward, recompute): the RNG state is replayed, so the grads agree.
    ckpt.configure(None)
    reference = _grads(_block(dropout=0.3), lambda m, x: (torch.manual_seed(7), m(x))[1])
    checkpointed = _grads(_block(dropout=0.3), lambda m, x: (torch.manual_seed(7), form(m, x))[1])
    torch.testing.assert_close(checkpointed[0], reference[0], rtol=0, atol=0)
    for got, want in zip(checkpointed[1], reference[1]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(checkpointed[2], reference[2], rtol=0, atol=0)


def test_checkpoint_does_not_keep_the_segments_activations() -> None:
    block = _block()
    x = torch.randn(4, 6, requires_grad=True)
    saved: list[torch.Size] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        ckpt.checkpoint(block, x).sum()
    assert saved == [x.shape]  # only the input; the hidden (4, 16) activations are recomputed
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        block(x).sum()
    assert torch.Size([4, 16]) in saved


def test_keyword_tensors_take_part_in_autograd() -> None:
    weight = torch.randn(6, requires_grad=True)

    def scaled(x: torch.Tensor, *, w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x * w)

    x = torch.randn(3, 6, requires_grad=True)
    ckpt.checkpoint(scaled, x, w=weight).sum().backward()
    expected = torch.autograd.grad(torch.tanh(x.detach() * weight).sum(), weight)[0]
    torch.testing.assert_close(weight.grad, expected)


def test_reentrant_form_needs_an_input_that_requires_grad() -> None:
    # Note [reentrant]: as in DeepSpeed, parameters get no gradient when no input requires grad;
    # the non-reentrant form has no such condition.
    block = _block()
    x = torch.randn(4, 6)
    with pytest.warns(UserWarning, match="requires_grad"):
        out = ckpt.checkpoint(block, x)
    assert not out.requires_grad
    ckpt.non_reentrant_checkpoint(block, x).sum().backward()
    assert all(p.grad is not None for p in block.parameters())


def test_cpu_checkpointing_keeps_inputs_through_save_on_cpu() -> None:
    """With ``checkpoint_in_cpu`` the kept input goes through torch's save_on_cpu hooks, which take
    precedence over an outer hook; without it the outer hook sees it."""
    block = _block()
    x = torch.randn(4, 6, requires_grad=True)
    seen: list[torch.Size] = []
    hooks = (lambda t: seen.append(t.shape) or t, lambda t: t)
    ckpt.configure(None, checkpoint_in_cpu=False)
    with torch.autograd.graph.saved_tensors_hooks(*hooks):
        ckpt.checkpoint(block, x)
    assert seen == [x.shape]
    seen.clear()
    ckpt.configure(None, checkpoint_in_cpu=True)
    with torch.autograd.graph.saved_tensors_hooks(*hooks):
        out = ckpt.checkpoint(block, x)
    assert seen == []
    out.sum().backward()  # the input comes back from host memory for the recompute
    assert x.grad is not None


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_profile_logs_forward_and_recompute_and_synchronize_calls_the_accelerator(monkeypatch) -> None:  # noqa: ANN001
    from ds_accel import get_accelerator

    calls: list[int] = []
    monkeypatch.setattr(type(get_accelerator()), "synchronize", lambda self, *a: calls.append(1))
    ckpt.configure(None, profile=True, synchronize=True)
    x = torch.randn(4, 6, requires_grad=True)
    logger, records = logging.getLogger("ds_engine"), _Records()  # the engine's logger may not propagate
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(records)
    try:
        ckpt.checkpoint(_block(), x).sum().backward()
    finally:
        logger.removeHandler(records)
    messages = [m for m in records.messages if "activation checkpoint" in m]
    assert [m.split()[2] for m in messages] == ["forward", "recompute"]
    assert len(calls) == 4  # before and after each of the two runs

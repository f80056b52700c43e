"""The model-parallel RNG tracker (ds_engine.rng_tracker) and its replay under activation checkpointing.

On this CPU machine the accelerator's generator is torch's CPU generator, which is what the tracker
forks; the same code drives the CUDA generator on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from ds_engine import activation_checkpointing as ac
from ds_engine import rng_tracker as rt


@pytest.fixture(autouse=True)
def fresh_tracker():
    rt.get_cuda_rng_tracker().reset()
    yield
    rt.get_cuda_rng_tracker().reset()


def test_a_stream_is_its_seed_and_leaves_the_default_stream_alone():
    tracker = rt.get_cuda_rng_tracker()
    torch.manual_seed(1)
    tracker.add("stream", 1234)
    default_next = torch.rand(3)  # adding a stream did not advance or reseed the default one
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), default_next)

    torch.manual_seed(1)
    with tracker.fork("stream"):
        first = torch.rand(4)
    with tracker.fork("stream"):
        second = torch.rand(4)
    after = torch.rand(3)
    torch.manual_seed(1234)
    assert torch.equal(torch.cat([first, second]), torch.rand(8))  # the stream carries on where it stopped
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(3))  # the default stream resumed untouched


def test_model_parallel_seed_and_reconfigure():
    rt.model_parallel_cuda_manual_seed(10)
    default = torch.rand(2)
    with rt.get_cuda_rng_tracker().fork():
        tracked = torch.rand(2)
    torch.manual_seed(10)
    assert torch.equal(default, torch.rand(2))
    torch.manual_seed(10 + 2718)  # tensor-parallel rank 0
    assert torch.equal(tracked, torch.rand(2))
    rt.model_parallel_reconfigure_tp_seed(5)
    with rt.get_cuda_rng_tracker().fork(rt.MODEL_PARALLEL_RNG):
        again = torch.rand(2)
    torch.manual_seed(5 + 2718)
    assert torch.equal(again, torch.rand(2))


def test_misuse_is_a_clear_error():
    tracker = rt.get_cuda_rng_tracker()
    tracker.add("a", 1)
    with pytest.raises(ValueError, match="seed 1 is already used"):
        tracker.add("b", 1)
    with pytest.raises(ValueError, match="'a' already exists"):
        tracker.add("a", 2)
    with pytest.raises(KeyError, match="no stream named 'missing'"), tracker.fork("missing"):
        pass


class TrackedDropout(torch.nn.Module):
    """Dropout inside a tensor-parallel region: drawn from the tracker's model-parallel stream."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with rt.get_cuda_rng_tracker().fork():
            x = torch.nn.functional.dropout(self.fc(x), p=0.5, training=True)
        return torch.nn.functional.dropout(x, p=0.3, training=True)  # and one from the default stream


@pytest.mark.parametrize("segment", [ac.checkpoint, ac.non_reentrant_checkpoint])
def test_checkpointed_segment_replays_the_tracked_stream(segment):
    torch.manual_seed(0)
    layer = TrackedDropout()
    x = torch.randn(8, 16, requires_grad=True)

    def run(checkpointed: bool):
        rt.model_parallel_cuda_manual_seed(42)
        layer.zero_grad()
        x.grad = None
        out = segment(layer, x) if checkpointed else layer(x)
        after = torch.rand(2)  # what the code after the segment draws must not change either
        out.pow(2).sum().backward()
        return out.detach(), x.grad.clone(), layer.fc.weight.grad.clone(), after

    plain, checkpointed = run(False), run(True)
    for want, got in zip(plain, checkpointed):
        assert torch.equal(want, got)

"""Note [adaptive buckets] in ds_zero.policy: where the config leaves ``reduce_bucket_size`` unset, the
bucket (stage 0) or flat unit (stages 1-2) follows the transport: DeepSpeed's one big bucket through
shared memory, 25 MiB buckets through c10d so that reductions overlap backward. A set value wins."""

from __future__ import annotations

import os

import pytest
import torch
from _models import zero_trainer

from ds_comm.testing import run_distributed
from ds_zero.policy import DEFAULT_BUCKET_NUMEL, SOCKET_BUCKET_BYTES, ReducePolicy


def test_the_rule() -> None:
    unset = ReducePolicy()
    assert unset.bucket_numel_for(on_host=True, itemsize=4) == DEFAULT_BUCKET_NUMEL
    assert unset.bucket_numel_for(on_host=False, itemsize=4) == SOCKET_BUCKET_BYTES // 4
    assert unset.bucket_numel_for(on_host=False, itemsize=2) == SOCKET_BUCKET_BYTES // 2
    assert ReducePolicy(bucket_numel=1234).bucket_numel_for(on_host=False, itemsize=4) == 1234


def _counts(stage: int, shm: str, bucket: int | None):
    os.environ["DS_ZERO_SHM_ALLREDUCE"] = shm
    torch.manual_seed(0)
    # 2 x 4.2M fp32 weights = 33.5 MB: more than one 25 MiB bucket, far less than DeepSpeed's default
    model = torch.nn.Sequential(*(torch.nn.Linear(2048, 2048, bias=False) for _ in range(2)))
    opt = zero_trainer(model, stage, bucket=bucket, optimizer=torch.optim.SGD)
    opt.backward(model(torch.randn(2, 2048)).pow(2).mean())
    opt.step()
    if stage == 0:
        return len(opt.reducer.buckets), opt.reducer.transport
    return len(opt.masters.units), None


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "stage,shm,bucket,want",
    [
        (0, "0", None, 2),  # c10d: 25 MiB buckets
        (0, "1", None, 1),  # shared memory: one bucket
        (0, "0", DEFAULT_BUCKET_NUMEL, 1),  # the config's value wins
        (2, "0", None, 2),
        (2, "1", None, 1),
        (1, "0", 1_000_000_000, 1),
    ],
)
def test_bucket_follows_the_transport_unless_set(stage: int, shm: str, bucket: int | None, want: int) -> None:
    counts = run_distributed(_counts, 2, 200, args=(stage, shm, bucket))
    assert [c[0] for c in counts] == [want, want]
    if stage == 0:
        assert counts[0][1] == ("shm" if shm == "1" else "c10d")

"""Stage 3 on a CUDA GPU (NCCL, one rank): fp32 numerics against plain PyTorch, with and without CPU
offload (pinned shards, the optimizer stepping on the CPU), a model built under ``zero.Init`` on the
GPU, and bf16 training. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from _models import global_batches, tiny_mlp
from _stage3_models import stage3_policy

from ds_comm.testing import run_distributed

pytestmark = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _reference(steps: int) -> dict[str, torch.Tensor]:
    model = tiny_mlp().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    for x, y in global_batches(steps, 4, 1):
        torch.nn.functional.mse_loss(model(x.cuda()), y.cuda()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _on_gpu():
    import ds_comm
    from ds_zero import wrap
    from ds_zero.stage3 import GatheredParameters, Init, full_state_dict

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.cuda.set_device(0)
    nccl = ds_comm.new_group(ranks=[0], backend="nccl")
    out = {}
    for offload in (False, True):
        model = tiny_mlp().cuda()
        trainer = wrap(
            model,
            torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01),
            policy=stage3_policy(clip=0.5, offload=offload, pin_memory=True),
            group=nccl,
        )
        for x, y in global_batches(5, 4, 1):
            trainer.backward(torch.nn.functional.mse_loss(model(x.cuda()), y.cuda()))
            trainer.step()
        out[offload] = full_state_dict(model, rank0_only=False)
        out[f"{offload}_master_device"] = trainer.optimizer.param_groups[0]["params"][0].device.type
    with Init(dtype=torch.float32, data_parallel_group=nccl):
        built = tiny_mlp()
    out["init_device"] = built[0].weight.ds_tensor.device.type
    with GatheredParameters(list(built.parameters())):
        out["init_values"] = {k: v.detach().cpu().clone() for k, v in built.state_dict().items()}
    bf16 = wrap(
        built,
        torch.optim.AdamW(built.parameters(), lr=1e-2),
        policy=stage3_policy(dtype=torch.bfloat16),
        group=nccl,
    )
    losses = []
    for x, y in global_batches(5, 4, 1):
        loss = torch.nn.functional.mse_loss(built(x.cuda()).float(), y.cuda())
        bf16.backward(loss)
        bf16.step()
        losses.append(float(loss))
    out["bf16_losses"] = losses
    return out


@needs_gpu
@pytest.mark.timeout(300)
def test_stage3_on_cuda():
    out = run_distributed(_on_gpu, world_size=1, timeout=280)[0]
    expected = _reference(5)
    for offload in (False, True):
        for key, want in expected.items():
            torch.testing.assert_close(
                out[offload][key].cpu(), want, rtol=1e-5, atol=1e-5, msg=f"offload={offload} {key}"
            )
    assert out["False_master_device"] == "cuda" and out["True_master_device"] == "cpu"
    assert out["init_device"] == "cuda"
    for key, want in tiny_mlp().state_dict().items():
        assert torch.equal(out["init_values"][key], want), key
    assert all(torch.isfinite(torch.tensor(out["bf16_losses"])))

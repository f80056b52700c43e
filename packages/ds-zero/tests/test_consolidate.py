"""zero_to_fp32: consolidated weights from a sharded checkpoint load into the plain model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _models import zero_trainer

import ds_comm
from ds_comm.testing import run_distributed
from ds_zero.consolidate import get_fp32_state_dict_from_zero_checkpoint, load_state_dict_from_zero_checkpoint


def model_with_buffers(dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 2)).to(
        dtype
    )


def _train_and_save(ckpt: str):
    rank = ds_comm.get_rank()
    model = model_with_buffers()
    opt = zero_trainer(model, 2, bucket=40, dtype=torch.bfloat16)
    for _ in range(3):
        opt.backward(model(torch.randn(4, 6, dtype=torch.bfloat16)).float().pow(2).mean())
        opt.step()
    names = dict(enumerate(n for n, _ in model.named_parameters()))
    tag = f"{ckpt}/global_step3"
    import os

    os.makedirs(tag, exist_ok=True)
    torch.save(
        {"optimizer_state_dict": opt.state_dict()}, f"{tag}/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
    )
    if rank == 0:
        torch.save(
            {"module": model.state_dict(), "buffer_names": [n for n, _ in model.named_buffers()]},
            f"{tag}/mp_rank_00_model_states.pt",
        )
        with open(f"{ckpt}/latest", "w") as fh:
            fh.write("global_step3")
    masters = {}
    for unit, master in zip(opt.masters.units, opt.masters.holders):
        for slot, start, end, off in unit.owned_slices():
            masters[(names[slot.index], start)] = master.detach()[off : off + end - start].clone()
    return masters, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt")
    results = run_distributed(_train_and_save, world_size=2, args=(str(ckpt),))
    masters = {}
    for rank_masters, _ in results:
        masters.update(rank_masters)
    return ckpt, masters, results[0][1]


def _expected_fp32(masters, module_state):
    out = {}
    for name, value in module_state.items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            out[name] = value
            continue
        flat = torch.empty(value.numel())
        for (key, start), piece in masters.items():
            if key == name:
                flat[start : start + piece.numel()] = piece
        out[name] = flat.view(value.shape)
    return out


def test_state_dict_is_the_fp32_masters_plus_buffers(checkpoint):
    ckpt, masters, module_state = checkpoint
    state = get_fp32_state_dict_from_zero_checkpoint(ckpt)
    expected = _expected_fp32(masters, module_state)
    assert list(state) == list(module_state)
    for name, value in expected.items():
        assert state[name].dtype == (
            value.dtype if "running" in name or "num_batches" in name else torch.float32
        )
        assert torch.equal(state[name], value), name


def test_load_into_plain_model(checkpoint):
    ckpt, masters, module_state = checkpoint
    model = load_state_dict_from_zero_checkpoint(model_with_buffers(torch.float32), ckpt)
    for name, value in _expected_fp32(masters, module_state).items():
        assert torch.equal(model.state_dict()[name], value.to(model.state_dict()[name].dtype))


@pytest.mark.timeout(120)
def test_cli_writes_bin(checkpoint, tmp_path):
    ckpt, masters, module_state = checkpoint
    out = subprocess.run(
        [sys.executable, "-m", "ds_zero.consolidate", str(ckpt), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert out.returncode == 0, out.stderr
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert torch.equal(state["0.weight"], _expected_fp32(masters, module_state)["0.weight"])
    # progress on stderr: each rank file read, then each output file written
    optim_files = sorted(p.name for p in Path(ckpt).glob("*/*_optim_states.pt"))
    reading = [line for line in out.stderr.splitlines() if " reading " in line]
    assert len(reading) == len(optim_files) and reading[0].startswith(
        f"zero_to_fp32: [1/{len(optim_files)}] reading"
    )
    assert "zero_to_fp32: [1/1] writing pytorch_model.bin (" in out.stderr
    assert out.stdout.strip() == f"wrote {tmp_path / 'pytorch_model.bin'}"


@pytest.mark.timeout(120)
def test_safetensors_sharded_with_index(checkpoint, tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    from ds_zero.consolidate import convert_zero_checkpoint_to_fp32_state_dict

    ckpt, masters, module_state = checkpoint
    files = convert_zero_checkpoint_to_fp32_state_dict(
        ckpt, tmp_path, max_shard_size="300B", safe_serialization=True
    )
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(files) > 2 and set(index["weight_map"]) == set(module_state)
    merged = {}
    for name in set(index["weight_map"].values()):
        merged.update(load_file(tmp_path / name))
    assert torch.equal(merged["2.weight"], _expected_fp32(masters, module_state)["2.weight"])


@pytest.mark.timeout(60)
def test_cli_missing_checkpoint_is_one_line_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "ds_zero.consolidate", str(tmp_path / "nope"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"zero_to_fp32: error: no tag given and no 'latest' file in '{tmp_path / 'nope'}'"
    ]

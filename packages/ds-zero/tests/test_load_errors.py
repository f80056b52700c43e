"""ds_zero.load_errors through the DeepSpeed rank-file reader: damaged files are named, unsafe ones are
refused, and neither message repeats torch's advice to load with weights_only=False."""

from __future__ import annotations

import os

import pytest
import torch

from ds_zero import deepspeed_format as df

RANK_FILE = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def _read_error(path) -> str:
    with pytest.raises(df.DeepSpeedCheckpointError) as caught:
        df.load_deepspeed_file(str(path))
    return str(caught.value)


@pytest.mark.faults
def test_truncated_rank_file_is_named(tmp_path) -> None:
    path = tmp_path / RANK_FILE
    torch.save({"optimizer_state_dict": {"zero_stage": 2, "x": torch.ones(256)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    message = _read_error(path)
    assert message.startswith(f"{path} is truncated or not a torch checkpoint: ") and "False" not in message


@pytest.mark.faults
def test_random_bytes_are_named_without_the_unsafe_advice(tmp_path) -> None:
    path = tmp_path / RANK_FILE
    noise = torch.randint(0, 256, (2048,), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    path.write_bytes(b"\x80" + bytes(noise))
    message = _read_error(path)
    assert message.startswith(f"{path} is truncated or not a torch checkpoint: ")
    assert "weights_only" not in message and "False" not in message


@pytest.mark.faults
def test_a_pickle_that_would_run_code_is_refused_as_unsafe(tmp_path) -> None:
    class Planted:
        def __reduce__(self):
            return (os.system, ("echo planted",))

    path = tmp_path / RANK_FILE
    torch.save({"optimizer_state_dict": {"payload": Planted()}}, path)
    message = _read_error(path)
    assert message.startswith(f"{path}: cannot be read safely (weights_only=True): ") and "system" in message
    assert "False" not in message


def test_rank_file_paths_follow_the_bf16_prefix(tmp_path) -> None:
    assert df.rank_file_paths(str(tmp_path), 2) == [
        str(tmp_path / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt") for r in range(2)
    ]
    (tmp_path / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"")
    assert df.rank_file_paths(str(tmp_path), 2)[0] == str(
        tmp_path / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    )

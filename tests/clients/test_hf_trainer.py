"""Hugging Face ``Trainer`` with ``--deepspeed <config>`` on this project's ``deepspeed``, 2 CPU ranks.

The script (``scripts/hf_trainer.py``) is launched by ``deepspeed --num_gpus 2``; the Trainer drives
the engine itself. A first run trains 6 optimizer steps (2 micro-batches each) and saves at steps 3
and 6; a second run resumes from ``checkpoint-3`` and must reproduce steps 4-6 exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

STEPS, MICRO_PER_STEP = 6, 2


def _check_layout(checkpoint: Path, step: int, stage: int) -> None:
    """The files clients read directly, with DeepSpeed's names and keys."""
    assert (checkpoint / "latest").read_text().strip() == f"global_step{step}"
    tag = checkpoint / f"global_step{step}"
    model_states = "zero_pp_rank_0_mp_rank_00_model_states.pt" if stage == 3 else "mp_rank_00_model_states.pt"
    state = torch.load(tag / model_states, map_location="cpu", weights_only=True)
    for key in (
        "module",
        "lr_scheduler",
        "global_steps",
        "skipped_steps",
        "dp_world_size",
        "mp_world_size",
        "ds_config",
        "ds_version",
    ):
        assert key in state, f"{model_states} lacks '{key}'"
    assert state["global_steps"] == step and state["dp_world_size"] == 2 and state["mp_world_size"] == 1
    assert state["ds_config"]["zero_optimization"]["stage"] == stage
    for rank in range(2):
        optim = torch.load(
            tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", map_location="cpu", weights_only=True
        )
        assert optim["optimizer_state_dict"]["zero_stage"] == stage


def _check_saved_model(checkpoint: Path) -> None:
    """The Trainer's ``model.safetensors`` (at stage 3 gathered by ``_zero3_consolidated_16bit_state_dict``)
    equals what ``zero_to_fp32`` rebuilds from the ZeRO checkpoint beside it, and loads into a plain model."""
    from safetensors.torch import load_file
    from transformers import GPT2Config, GPT2LMHeadModel

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    saved = load_file(checkpoint / "model.safetensors")
    consolidated = get_fp32_state_dict_from_zero_checkpoint(checkpoint)
    assert saved, "model.safetensors is empty"
    for name, tensor in saved.items():
        assert torch.equal(consolidated[name], tensor), name
    plain = GPT2LMHeadModel(GPT2Config.from_pretrained(checkpoint))
    missing, unexpected = plain.load_state_dict(consolidated, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embedding


@pytest.mark.timeout(420)
@pytest.mark.parametrize(
    ("stage", "extra"),
    [
        pytest.param(2, [], id="stage2-config-optimizer"),
        pytest.param(3, ["--trainer_optimizer"], id="stage3-trainer-optimizer"),
    ],
)
def test_trainer_trains_saves_and_resumes_exactly(launch, stage: int, extra: list[str]) -> None:
    full = launch("deepspeed", "hf_trainer.py", "full", "--stage", str(stage), *extra)
    for result in full.results:
        assert (result["engine"], result["zero_stage"], result["global_step"]) == (
            "DeepSpeedEngine",
            stage,
            STEPS,
        )
        assert len(result["losses"]) == STEPS * MICRO_PER_STEP
        first, last = result["losses"][:4], result["losses"][-4:]
        assert sum(last) < sum(first), result["losses"]  # it learns
        assert (result["partitioned_params"] > 0) == (stage == 3)
    assert full.results[0]["losses"] != full.results[1]["losses"]  # each rank saw its own data
    for step in (3, 6):
        _check_layout(full.out / f"checkpoint-{step}", step, stage)
    _check_saved_model(full.out / "checkpoint-6")

    resumed = launch(
        "deepspeed",
        "hf_trainer.py",
        "resumed",
        "--stage",
        str(stage),
        *extra,
        "--resume_from_checkpoint",
        str(full.out / "checkpoint-3"),
    )
    for rank in range(2):
        after_save = full.results[rank]["losses"][3 * MICRO_PER_STEP :]
        assert resumed.results[rank]["losses"] == after_save, f"rank {rank}"
        assert resumed.results[rank]["lr"] == full.results[rank]["lr"]

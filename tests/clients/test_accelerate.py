"""Accelerate with a ``DeepSpeedPlugin`` on this project's ``deepspeed``, 2 CPU ranks via ``accelerate launch``.

The script (``scripts/accelerate_train.py``) trains 6 optimizer steps of a tiny Llama with a torch
AdamW and LR schedule, calling ``save_state`` after step 3; a second launch calls ``load_state`` and
must reproduce steps 4-6 exactly. With optimizer offload, Accelerate swaps the AdamW for
``deepspeed.ops.adam.DeepSpeedCPUAdam`` itself.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

STEPS, SAVE_AFTER, MICRO_PER_STEP = 6, 3, 2


@pytest.mark.timeout(420)
@pytest.mark.parametrize(
    ("stage", "offload", "optimizer"),
    [
        pytest.param(2, False, "AdamW", id="stage2"),
        pytest.param(3, False, "AdamW", id="stage3"),
        pytest.param(2, True, "DeepSpeedCPUAdam", id="stage2-offload-optimizer"),
    ],
)
def test_save_state_and_load_state_resume_exactly(launch, stage: int, offload: bool, optimizer: str) -> None:
    args = ["--stage", str(stage), *(["--offload_optimizer"] if offload else [])]
    full = launch("accelerate", "accelerate_train.py", "full", *args)
    for result in full.results:
        assert (result["engine"], result["zero_stage"], result["steps"]) == ("DeepSpeedEngine", stage, STEPS)
        assert result["optimizer"] == optimizer
        assert len(result["losses"]) == STEPS * MICRO_PER_STEP
        assert sum(result["losses"][-4:]) < sum(result["losses"][:4]), result["losses"]
        assert (result["partitioned_params"] > 0) == (stage == 3)
        assert (result["leaf_modules"] > 0) == (
            stage == 3
        )  # transformer_moe_cls_names reached our leaf flags

    state = full.out / "state_step3"  # Accelerate saves the engine's checkpoint under the tag "pytorch_model"
    tag = (state / "latest").read_text().strip()
    assert tag == "pytorch_model"
    model_states = "zero_pp_rank_0_mp_rank_00_model_states.pt" if stage == 3 else "mp_rank_00_model_states.pt"
    saved = torch.load(state / tag / model_states, map_location="cpu", weights_only=True)
    assert saved["global_steps"] == SAVE_AFTER and saved["ds_config"]["zero_optimization"]["stage"] == stage
    if offload:
        assert saved["ds_config"]["zero_optimization"]["offload_optimizer"]["device"] == "cpu"

    resumed = launch("accelerate", "accelerate_train.py", "resumed", *args, "--resume")
    for rank in range(2):
        assert (
            resumed.results[rank]["losses"] == full.results[rank]["losses"][SAVE_AFTER * MICRO_PER_STEP :]
        ), f"rank {rank}"
        assert resumed.results[rank]["lr"] == full.results[rank]["lr"]

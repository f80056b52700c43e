"""TRL's ``DPOTrainer`` at ZeRO-3 with a reference model, on this project's ``deepspeed``, 2 CPU ranks.

The script (``scripts/trl_dpo.py``) is launched by ``deepspeed --num_gpus 2``. TRL's ``prepare_deepspeed``
builds the reference model's engine without an optimizer from the stage-3 config (plus its dotted keys,
which are reported and not applied, as in DeepSpeed); both models are built under ``zero.Init``. The
reference engine must hold partitioned parameters and gather them in its no-grad forward: the first DPO
loss is exactly ln 2, since policy and reference start equal, and training moves it down.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("trl")

STEPS = 4


@pytest.mark.timeout(300)
def test_dpo_at_zero3_with_a_sharded_reference_model(launch) -> None:
    run = launch("deepspeed", "trl_dpo.py", "dpo")
    for result in run.results:
        assert (result["ref_engine"], result["ref_optimizer"], result["ref_training"]) == (
            "DeepSpeedEngine",
            "None",
            False,
        )
        assert result["ref_born_partitioned"] == result["ref_params"]  # built under zero.Init
        assert (
            0 < result["ref_partitioned"] < result["ref_params"]
        )  # the head and projections sharded, norms whole
        assert result["policy_zero_stage"] == 3 and result["global_step"] == STEPS
        losses = result["losses"]
        assert len(losses) == STEPS
        assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # the reference forward equals the policy's
        assert losses[-1] < losses[0] and result["chosen_rewards"][-1] > 0
    assert "'zero_optimization.stage3_prefetch_bucket_size'; a dotted key is not applied" in run.log

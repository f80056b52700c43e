"""Ulysses sequence parallelism through Hugging Face, unchanged: the Trainer with Accelerate's
``ParallelismConfig(sp_backend="deepspeed", sp_size=2)`` on this project's ``deepspeed``, 2 CPU ranks.

A first run trains 6 steps of a tiny Llama (saving at 3 and 6); a second resumes from ``checkpoint-3``
and must reproduce steps 4-6 exactly. Both ranks of the sequence-parallel group hold the whole
sequence's loss at every step (HF's weighted loss over the two shards).
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")


def _first_loss_without_sp() -> float:
    """The untrained model's loss on the (one) training sequence, whole, in this process."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    import hf_trainer_sp

    sample = hf_trainer_sp.PositionedTokens()[0]
    model = hf_trainer_sp.tiny_llama_sdpa()
    out = model(
        input_ids=sample["input_ids"][None],
        labels=sample["labels"][None],
        position_ids=sample["position_ids"][None],
    )
    return out.loss.item()


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("stage", [2, 3])
def test_trainer_with_ulysses_trains_and_resumes(launch, stage: int) -> None:
    full = launch("deepspeed", "hf_trainer_sp.py", "full", "--stage", str(stage))
    for result in full.results:
        assert (result["engine"], result["zero_stage"], result["sp"], result["seq_dp"]) == (
            "DeepSpeedEngine",
            stage,
            2,
            2,
        )
        assert result["global_step"] == 6 and len(result["losses"]) == 6
        assert sum(result["losses"][-2:]) < sum(result["losses"][:2]), result["losses"]  # it learns
        assert (result["partitioned_params"] > 0) == (stage == 3)
    assert full.results[0]["losses"] == pytest.approx(full.results[1]["losses"], abs=1e-6)
    assert full.results[0]["losses"][0] == pytest.approx(_first_loss_without_sp(), abs=1e-5)

    resumed = launch(
        "deepspeed",
        "hf_trainer_sp.py",
        "resumed",
        "--stage",
        str(stage),
        "--resume_from_checkpoint",
        str(full.out / "checkpoint-3"),
    )
    for rank in range(2):
        assert resumed.results[rank]["losses"] == pytest.approx(full.results[rank]["losses"][3:], abs=1e-6)

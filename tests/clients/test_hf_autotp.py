"""AutoTP through Hugging Face, unchanged: the Trainer with ``"tensor_parallel": {"autotp_size": 2}`` in
its DeepSpeed config on this project's ``deepspeed``, 2 CPU ranks (the ``deepspeed`` launcher).

A first run trains 6 steps of a tiny Llama (saving at 3 and 6, then ``save_model``); a second resumes from
``checkpoint-3`` and must reproduce steps 4-6. Both ranks (one tensor-parallel group) see the same batches
and hold the same loss; the first loss equals the plain model's; the saved model loads into a plain
``LlamaForCausalLM`` and computes the trained split model's logits. A tiny Phi-3 (fused ``qkv_proj`` with GQA,
fused ``gate_up_proj``) trains and saves the same way, its saved model in the plain fused layout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "scripts"))


def _plain_loss(input_ids: list[list[int]]) -> float:
    """The untrained plain model's loss on a batch, in this process."""
    import hf_trainer_tp

    ids = torch.tensor(input_ids)
    return hf_trainer_tp.tiny_llama()(input_ids=ids, labels=ids).loss.item()


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.parametrize("stage", [1, 2])
def test_trainer_with_autotp_trains_saves_resumes(launch, stage: int) -> None:
    import hf_trainer_tp
    from transformers import LlamaForCausalLM

    full = launch("deepspeed", "hf_trainer_tp.py", "full", "--stage", str(stage))
    for result in full.results:
        assert (result["engine"], result["zero_stage"], result["tp"], result["dp"]) == (
            "DeepSpeedEngine",
            stage,
            2,
            1,
        )
        assert (
            result["train_batch_size"] == 4
        )  # DeepSpeed counts tensor ranks: micro 2 x 2 ranks (dp 1 x tp 2)
        assert result["q_proj_shape"] == [16, 32]  # split: half the rows
        assert result["global_step"] == 6 and len(result["losses"]) == 6
    assert full.results[0]["losses"] == pytest.approx(full.results[1]["losses"], abs=1e-6)
    assert full.results[0]["first_input_ids"] == full.results[1]["first_input_ids"]  # one batch per TP group
    assert full.results[0]["losses"][0] == pytest.approx(
        _plain_loss(full.results[0]["first_input_ids"]), abs=1e-5
    )

    plain = LlamaForCausalLM.from_pretrained(str(full.out / "final"))
    with torch.no_grad():
        logits = plain(input_ids=hf_trainer_tp.probe()).logits
    assert (logits - torch.tensor(full.results[0]["logits"])).abs().max().item() < 1e-5

    resumed = launch(
        "deepspeed",
        "hf_trainer_tp.py",
        "resumed",
        "--stage",
        str(stage),
        "--resume_from_checkpoint",
        str(full.out / "checkpoint-3"),
    )
    for rank in range(2):
        assert resumed.results[rank]["losses"] == pytest.approx(full.results[rank]["losses"][3:], abs=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trainer_with_autotp_saves_fused_phi3(launch) -> None:
    """Phi-3's fused qkv_proj (GQA) and gate_up_proj split per block: the Trainer's saved model is the plain
    fused layout with the full head counts in its config, and computes the trained split model's logits."""
    import hf_trainer_tp
    from transformers import Phi3ForCausalLM

    full = launch("deepspeed", "hf_trainer_tp.py", "phi3", "--stage", "2", "--model", "phi3")
    for result in full.results:
        assert (result["tp"], result["dp"], result["global_step"]) == (2, 1, 6)
        assert result["q_proj_shape"] == [
            32,
            32,
        ]  # qkv_proj: half of q (32) + half of k (16) + half of v (16)
    assert full.results[0]["losses"] == pytest.approx(full.results[1]["losses"], abs=1e-6)
    plain_loss = hf_trainer_tp.tiny_phi3()(
        input_ids=torch.tensor(full.results[0]["first_input_ids"]),
        labels=torch.tensor(full.results[0]["first_input_ids"]),
    ).loss.item()
    assert full.results[0]["losses"][0] == pytest.approx(plain_loss, abs=1e-5)
    plain = Phi3ForCausalLM.from_pretrained(str(full.out / "final"))
    assert (plain.config.num_attention_heads, plain.config.num_key_value_heads) == (4, 2)
    with torch.no_grad():
        logits = plain(input_ids=hf_trainer_tp.probe()).logits
    assert (logits - torch.tensor(full.results[0]["logits"])).abs().max().item() < 1e-5

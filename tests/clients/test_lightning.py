"""PyTorch Lightning's ``DeepSpeedStrategy`` on this project's ``deepspeed``, 2 CPU ranks.

The script (``scripts/lightning_train.py``, launched by ``deepspeed --num_gpus 2``) trains two epochs
with a ``ModelCheckpoint`` after each, its middle block under ``deepspeed.checkpointing.checkpoint``;
a second launch resumes from the first epoch's checkpoint and must reproduce the second epoch. The
last checkpoint, consolidated by ``convert_zero_checkpoint_to_fp32_state_dict`` (Lightning's and
DeepSpeed's), loads into a plain model with the trained weights.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

from _launching import SCRIPTS  # noqa: E402

STEPS_PER_EPOCH = 3  # 48 samples / 2 ranks / batch 8


def _plain_model() -> torch.nn.Module:
    """A fresh instance of the script's LightningModule (plain weights, no strategy, no process group)."""
    spec = importlib.util.spec_from_file_location("lightning_train", SCRIPTS / "lightning_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Regressor()


def _check_consolidation(checkpoint: Path, final: dict[str, torch.Tensor], tmp: Path) -> None:
    from lightning.pytorch.utilities.deepspeed import (
        convert_zero_checkpoint_to_fp32_state_dict as lightning_convert,
    )

    from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict

    # Lightning's converter (reads DeepSpeed's files through deepspeed.utils.zero_to_fp32) keeps its own
    # training state beside the weights, so the file loads as a Lightning checkpoint too.
    lightning_convert(checkpoint, tmp / "lightning_fp32.pt")
    converted = torch.load(tmp / "lightning_fp32.pt", map_location="cpu", weights_only=False)
    assert converted["global_step"] == 2 * STEPS_PER_EPOCH and "loops" in converted
    plain = _plain_model()
    plain.load_state_dict(converted["state_dict"], strict=True)
    for name, tensor in plain.state_dict().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, final[name]), name

    # DeepSpeed's converter writes pytorch_model.bin into a folder.
    written = convert_zero_checkpoint_to_fp32_state_dict(checkpoint, tmp / "deepspeed_fp32")
    assert [p.name for p in written] == ["pytorch_model.bin"]
    plain = _plain_model()
    plain.load_state_dict(torch.load(written[0], map_location="cpu", weights_only=True), strict=True)
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, final[name]), name


def _launch(launch, *args: str):  # noqa: ANN001, ANN202
    return launch("deepspeed", "lightning_train.py", *args)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("stage", [2, 3])
def test_strategy_trains_resumes_and_consolidates(launch, stage: int, tmp_path: Path) -> None:
    full = _launch(launch, "full", "--stage", str(stage))
    for result in full.results:
        assert (result["engine"], result["zero_stage"], result["global_step"]) == (
            "DeepSpeedEngine",
            stage,
            2 * STEPS_PER_EPOCH,
        )
        assert result["checkpointing_configured"] and result["checkpoint_in_cpu"]
        assert result["checkpoints"] == ["epoch=0.ckpt", "epoch=1.ckpt"]
        assert (result["partitioned_params"] > 0) == (stage == 3)
    ckpt_dir = full.out / "full_ckpt"
    assert (ckpt_dir / "epoch=1.ckpt" / "latest").read_text().strip() == "checkpoint"  # Lightning's tag

    resumed = _launch(
        launch, "resumed", "--stage", str(stage), "--resume_from", str(ckpt_dir / "epoch=0.ckpt")
    )
    for rank in range(2):
        assert resumed.results[rank]["losses"] == full.results[rank]["losses"][STEPS_PER_EPOCH:], (
            f"rank {rank}"
        )
    final = torch.load(full.out / "full_weights.pt", map_location="cpu", weights_only=True)
    after_resume = torch.load(full.out / "resumed_weights.pt", map_location="cpu", weights_only=True)
    assert final.keys() == after_resume.keys()
    for name in final:
        assert torch.equal(final[name], after_resume[name]), name

    _check_consolidation(ckpt_dir / "epoch=1.ckpt", final, tmp_path)

"""PyTorch Lightning's ``DeepSpeedStrategy``, as users write it, launched with

    deepspeed --num_gpus 2 lightning_train.py --stage 2 --output_dir out [--resume_from <ckpt dir>]

The LightningModule runs its middle block through ``deepspeed.checkpointing.checkpoint`` (activation
checkpointing, which the strategy configures on setup). A first run trains two epochs and keeps a
checkpoint after each; a resumed run starts from the first and trains the second epoch again. Each
step's loss is recorded per rank, and rank 0 writes the final weights for the test to compare.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _common  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy  # noqa: E402

import deepspeed  # noqa: E402


class Regressor(pl.LightningModule):
    """A three-block MLP; the middle block is activation-checkpointed through DeepSpeed."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh())
        self.middle = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Tanh())
        self.last = torch.nn.Linear(32, 1)
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(deepspeed.checkpointing.checkpoint(self.middle, self.first(x)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):  # noqa: ANN201
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy with its CUDA-only gate lifted: the stand-in for the GPUs this
    CPU-only test machine lacks (a mock). Each rank's device is indexed (``cpu:<local rank>``) as a GPU
    would be, which Lightning checks; everything DeepSpeed-facing is Lightning's own code."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003
        super().__init__(parallel_devices=[torch.device("cpu", i) for i in range(2)], **kwargs)

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)


def dataset() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(48, 8, generator=g)
    y = x[:, :1] * 0.5 - x[:, 1:2] ** 2 + 0.1 * torch.randn(48, 1, generator=g)
    return torch.utils.data.TensorDataset(x, y)


def ds_config(stage: int) -> dict:
    """A DeepSpeed config as Lightning users pass it (``DeepSpeedStrategy(config=...)``)."""
    zero = _common.zero_config(stage)
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = 0  # partition even this small model's parameters
    return {
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "train_micro_batch_size_per_gpu": 8,
        "activation_checkpointing": {"partition_activations": True, "cpu_checkpointing": True},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--resume_from", default=None)
    parser.add_argument("--local_rank", type=int, default=-1)  # passed by the deepspeed launcher
    args = parser.parse_args()

    pl.seed_everything(0, workers=True)
    model = Regressor()
    checkpoints = ModelCheckpoint(
        dirpath=Path(args.output_dir) / f"{args.result}_ckpt",
        save_top_k=-1,
        every_n_epochs=1,
        filename="{epoch}",
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=CPUDeepSpeedStrategy(config=ds_config(args.stage)),
        max_epochs=2,
        callbacks=[checkpoints],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
    )
    loader = torch.utils.data.DataLoader(dataset(), batch_size=8, shuffle=True)
    trainer.fit(model, loader, ckpt_path=args.resume_from)

    engine = trainer.strategy.deepspeed_engine
    weights = (
        engine._zero3_consolidated_16bit_state_dict()
    )  # every rank calls it; rank 0 gets the whole model
    if trainer.is_global_zero:
        torch.save(weights, Path(args.output_dir) / f"{args.result}_weights.pt")
    _common.write_result(
        args.output_dir,
        args.result,
        {
            "losses": model.losses,
            "global_step": trainer.global_step,
            "engine": type(engine).__name__,
            "zero_stage": engine.zero_optimization_stage(),
            "checkpointing_configured": deepspeed.checkpointing.is_configured(),
            "checkpoint_in_cpu": deepspeed.checkpointing.current_policy().checkpoint_in_cpu,
            "partitioned_params": _common.partitioned_params(engine.module),
            "checkpoints": sorted(p.name for p in Path(checkpoints.dirpath).iterdir()),
        },
    )


if __name__ == "__main__":
    main()

"""Train a small MLP with PyTorch Lightning's ``DeepSpeedStrategy`` (ZeRO stage 2 or 3) on GPUs:

    python examples/clients/lightning_train.py --devices 2 --stage 2 --save_dir out/lightning

Lightning starts one process per device itself (``deepspeed --num_gpus 2 lightning_train.py ...``
works too). Each epoch's checkpoint is a folder in DeepSpeed's layout; resume with
``--resume_from out/lightning/epoch=1.ckpt``, and turn the last one into a single fp32 file that loads
without DeepSpeed with ``--consolidate``. The middle block runs under ``deepspeed.checkpointing``
(activation checkpointing: its activations are recomputed during backward instead of kept).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

import deepspeed


class Regressor(pl.LightningModule):
    """A three-block MLP fitting a fixed nonlinear function."""

    def __init__(self, width: int = 512) -> None:
        super().__init__()
        self.first = torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.GELU())
        self.middle = torch.nn.Sequential(
            torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, width)
        )
        self.last = torch.nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(deepspeed.checkpointing.checkpoint(self.middle, self.first(x)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):  # noqa: ANN201
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3)
        return {
            "optimizer": optimizer,
            "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=self.trainer.max_epochs
            ),
        }


def dataset(samples: int = 8192) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 16, generator=g)
    y = torch.sin(x[:, :1] * 2) + x[:, 1:2] * x[:, 2:3]
    return torch.utils.data.TensorDataset(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--save_dir", default="out/lightning")
    parser.add_argument("--resume_from", default=None, help="a checkpoint folder written by an earlier run")
    parser.add_argument(
        "--consolidate", action="store_true", help="write <save_dir>/model_fp32.pt at the end"
    )
    parser.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher, if used")
    args = parser.parse_args()

    pl.seed_everything(0)
    checkpoints = ModelCheckpoint(dirpath=args.save_dir, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=args.devices,
        max_epochs=args.epochs,
        callbacks=[checkpoints],
        strategy=DeepSpeedStrategy(stage=args.stage),
        gradient_clip_val=1.0,
        logger=False,
    )
    loader = torch.utils.data.DataLoader(dataset(), batch_size=64, shuffle=True)
    trainer.fit(Regressor(), loader, ckpt_path=args.resume_from)
    if args.consolidate and trainer.is_global_zero:
        # The checkpoint folder becomes one file: weights in fp32 plus Lightning's own state.
        out = Path(args.save_dir) / "model_fp32.pt"
        convert_zero_checkpoint_to_fp32_state_dict(Path(args.save_dir) / f"epoch={args.epochs - 1}.ckpt", out)
        Regressor.load_from_checkpoint(out)  # loads without DeepSpeed


if __name__ == "__main__":
    main()

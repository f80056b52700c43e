"""Shared pieces of the client scripts: tiny models from configs, fixed data, DeepSpeed configs, results.

The scripts run as real ranks (started by the ``deepspeed`` launcher, ``accelerate launch`` or
torchrun); each writes ``<out>/<name>.rank<r>.json`` that the tests read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 64
SEQ = 16


def tiny_gpt2() -> torch.nn.Module:
    """A randomly initialised 2-layer GPT-2 (about 40k parameters), seeded so every run starts equal."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def tiny_llama() -> torch.nn.Module:
    """A randomly initialised 2-layer Llama, seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
    )
    return LlamaForCausalLM(config)


class TokenDataset(torch.utils.data.Dataset):
    """``n`` fixed random token sequences (a learnable pattern: each token is the previous one + 1)."""

    def __init__(self, n: int = 64, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, VOCAB, (n, 1), generator=g)
        self.ids = (starts + torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def zero_config(stage: int, *, offload_optimizer: bool = False, auto: bool = False) -> dict[str, Any]:
    """The ``zero_optimization`` section clients typically pass."""
    section: dict[str, Any] = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if offload_optimizer:
        section["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if stage == 3:
        section["stage3_gather_16bit_weights_on_model_save"] = True
        if auto:
            section.update(
                {
                    "reduce_bucket_size": "auto",
                    "stage3_prefetch_bucket_size": "auto",
                    "stage3_param_persistence_threshold": "auto",
                }
            )
    return section


def stand_in_for_accelerator() -> None:
    """Stand in for the GPU this CPU-only test machine lacks, in Accelerate's backend choice (a mock).

    Accelerate picks its process-group backend from the accelerator it finds (nccl on CUDA, ...). On a
    host with none it picks no backend and counts a single process even when the DeepSpeed launcher
    started several, so Trainer and Accelerator would size batches for one rank (real DeepSpeed hits
    the same wall there). Here, only when no CUDA device exists, the choice Accelerate makes for CPU
    ranks (gloo) is used instead; the DeepSpeed path itself is unchanged. On a GPU host this is a no-op.
    """
    if torch.cuda.is_available():
        return
    from accelerate.state import PartialState

    original = PartialState._prepare_backend

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):  # noqa: ANN001, ANN202
        chosen, kind = original(self, cpu, sagemaker_dp, backend)
        if chosen is None and int(os.environ.get("LOCAL_RANK", -1)) != -1:
            return original(self, True, sagemaker_dp, backend)
        return chosen, kind

    PartialState._prepare_backend = prepare_backend


def partitioned_params(module: torch.nn.Module) -> int:
    """How many of ``module``'s parameters this rank holds only a partition of (ZeRO stage 3)."""
    from ds_zero.stage3 import is_zero3_param

    return sum(1 for p in module.parameters() if is_zero3_param(p))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def write_result(out_dir: str | os.PathLike, name: str, payload: dict[str, Any]) -> None:
    """Write this rank's result file atomically."""
    path = Path(out_dir) / f"{name}.rank{rank()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)

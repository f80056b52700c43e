"""``get_model_profile`` on GPT-2 small (transformers' GPT2LMHeadModel from a config, no download) against
the reference DeepSpeed's profiler.

Reference numbers: deepspeed==0.19.8 in /work/dsref-venv (torch 2.13.0+cpu, transformers 5.24.0), running
``get_model_profile(model, kwargs={"input_ids": ids}, print_profile=False, as_string=False)`` on the same
model and a (2, 128) batch of token ids.

Where they differ: DeepSpeed charges ``torch.addmm``'s bias add (GPT-2's Conv1D layers call torch.addmm:
2304 + 768 + 3072 + 768 = 6912 bias elements per block, 12 blocks = 82,944 FLOPs) but not ``F.linear``'s;
both are the same aten op here, so neither is charged (Note [where counts differ from DeepSpeed] in
ds_engine.profiling.counting): 1.3e-6 of the total. MACs and parameters agree exactly.
"""

from __future__ import annotations

import pytest
import torch

REFERENCE_GPT2 = {"flops": 64_481_018_880, "macs": 32_228_179_968, "params": 124_439_808}


@pytest.mark.timeout(300)
def test_gpt2_profile_matches_deepspeed() -> None:
    transformers = pytest.importorskip("transformers")
    from deepspeed.profiling.flops_profiler import get_model_profile

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_positions=1024, n_embd=768, n_layer=12, n_head=12, vocab_size=50257)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 50257, (2, 128), generator=torch.Generator().manual_seed(0))
    flops, macs, params = get_model_profile(
        model, kwargs={"input_ids": ids}, print_profile=False, as_string=False
    )
    assert params == REFERENCE_GPT2["params"]
    assert macs == REFERENCE_GPT2["macs"]
    assert abs(flops - REFERENCE_GPT2["flops"]) / REFERENCE_GPT2["flops"] < 0.01
    assert REFERENCE_GPT2["flops"] - flops == 82_944  # the addmm bias adds, and nothing else

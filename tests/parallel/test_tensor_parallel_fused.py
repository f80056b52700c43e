"""AutoTP splits fused projections block by block: tiny transformers GPT-2 (``Conv1D`` c_attn with q, k, v) and
Phi-3 (``qkv_proj`` with GQA-sized q, k, v; ``gate_up_proj``) on real gloo ranks, against single-process PyTorch.

TP 2 on 2 ranks and TP 2 x DP 2 on 4 ranks, ZeRO 1 and 2, 6 SGD steps with clipping below the gradient norm:
losses, gradient norms and the gathered weights (``_consolidated_16bit_state_dict``) equal the whole model
trained in one process (fp32, 1e-5); each rank starts with exactly its half of each of q, k, v (gate, up);
split weights take 1/TP of their size; ``save_16bit_model`` writes the original fused layout, which a plain
HF model loads strictly and which computes the reference model's logits.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
import tp_fused_workers as w  # noqa: E402
import tp_workers  # noqa: E402
from torch import nn  # noqa: E402

from ds_comm.testing import run_distributed  # noqa: E402
from ds_parallel.tensor import PartitionError, partition_model  # noqa: E402
from ds_parallel.tensor.fused import fused_layout  # noqa: E402

STEPS = 6
# the parameters AutoTP splits (name suffixes); biases of row layers (c_proj) stay whole
SPLIT = {
    "gpt2": (
        "attn.c_attn.weight",
        "attn.c_attn.bias",
        "attn.c_proj.weight",
        "mlp.c_fc.weight",
        "mlp.c_fc.bias",
        "mlp.c_proj.weight",
    ),
    "phi3": ("qkv_proj.weight", "o_proj.weight", "gate_up_proj.weight", "down_proj.weight", "lm_head.weight"),
}


def _check(kind: str, results: list[dict], tp: int, save_dir) -> None:
    dp = len(results) // tp
    ref_losses, ref_state, ref_norms = w.reference(kind, STEPS, dp)
    state = results[0]["state"]
    for name, value in ref_state.items():
        assert state[name].shape == value.shape, name
        assert (state[name] - value).abs().max().item() < 1e-5, name
    for r in results:
        assert r["losses"] == pytest.approx(ref_losses, abs=1e-5)
        assert r["norms"] == pytest.approx(ref_norms, abs=1e-5)
        assert r["blocks_ok"] and all(r["blocks_ok"].values()), r["blocks_ok"]
        name, gathered = r["gathered"]
        assert torch.equal(gathered, state[name]) and r["restored"], name
        for name, full in r["full_numel"].items():
            expected = full // tp if name.endswith(SPLIT[kind]) else full
            assert r["local_numel"][name] == expected, name
    # the saved full weights: the plain fused layout, loaded strictly, computing the reference's logits
    plain = w.make_model(kind, seed=5)
    missing, unexpected = plain.load_state_dict(
        torch.load(save_dir / "full.bin", weights_only=True), strict=False
    )
    assert not unexpected and all(
        k in ("lm_head.weight",) for k in missing
    )  # GPT-2's head is the tied embedding
    ref = w.make_model(kind)
    ref.load_state_dict(ref_state)
    batch = tp_workers.global_batch(99, 1)
    with torch.no_grad():
        assert (plain(**batch).logits - ref(**batch).logits).abs().max().item() < 1e-5


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("kind", "stage"), [("gpt2", 1), ("phi3", 2)])
def test_fused_tp2_on_2_ranks_equals_tp1(kind: str, stage: int, tmp_path) -> None:
    results = run_distributed(
        w.train_rank, world_size=2, timeout=240, args=(kind, stage, 2, STEPS, str(tmp_path))
    )
    _check(kind, results, 2, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize(("kind", "stage"), [("phi3", 1), ("gpt2", 2)])
def test_fused_tp2_dp2_on_4_ranks_equals_tp1(kind: str, stage: int, tmp_path) -> None:
    results = run_distributed(
        w.train_rank, world_size=4, timeout=360, args=(kind, stage, 2, STEPS, str(tmp_path))
    )
    _check(kind, results, 2, tmp_path)


def test_layouts_of_the_known_fused_projections() -> None:
    gpt2, phi3 = w.make_model("gpt2"), w.make_model("phi3")
    attn = gpt2.transformer.h[0].attn
    assert fused_layout(attn, "c_attn", 96, "c_attn").sections == (32, 32, 32)
    layer = phi3.model.layers[0]
    assert fused_layout(layer.self_attn, "qkv_proj", 64, "qkv_proj").sections == (
        32,
        16,
        16,
    )  # q 4x8, k/v 2x8
    assert fused_layout(layer.mlp, "gate_up_proj", 128, "gate_up_proj").sections == (64, 64)
    assert fused_layout(nn.Module(), "qkv_proj", 64, "qkv_proj") is None  # unknown parent: no guessed layout


@pytest.mark.faults
def test_unknown_fused_layouts_stay_refused() -> None:
    """CodeGen's qkv_proj interleaves its blocks: refused by name, the model left whole."""
    from transformers import CodeGenConfig, CodeGenForCausalLM

    model = CodeGenForCausalLM(
        CodeGenConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=4, rotary_dim=4)
    )
    before = {n: p.shape for n, p in model.named_parameters()}
    with pytest.raises(
        PartitionError,
        match=r"'transformer\.h\.0\.attn\.qkv_proj': fused projection 'qkv_proj' "
        r"in CodeGenAttention has no known per-sub-matrix layout",
    ):
        partition_model(model, None, 2)
    assert {n: p.shape for n, p in model.named_parameters()} == before


@pytest.mark.faults
def test_gpt2_cross_attention_is_refused() -> None:
    """GPT-2's cross-attention c_attn holds only k and v (q is q_attn): not a layout handled here."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=4, add_cross_attention=True)
    )
    with pytest.raises(
        PartitionError, match=r"'transformer\.h\.0\.crossattention\.c_attn': GPT-2 cross-attention"
    ):
        partition_model(model, None, 2)
